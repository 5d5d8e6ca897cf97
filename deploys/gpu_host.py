"""
gpufleet's main deploy: a bare apt-based host to a pinned, held, configured NVIDIA stack.

    pyinfra inventories/<fleet>.py deploys/gpu_host.py

Before the first operation it reads the host in one round trip and checks the requested stack
against the compatibility planner; a refused host is left exactly as it was. At the end it
verifies the host (deploys/verify.py) unless `gpu_verify` is false.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from deploys import compat
from deploys.cuda import cuda_repository, cuda_toolkit
from deploys.cudnn import cudnn, cudnn_packages
from deploys.docker import DAEMON_JSON_PATH, daemon_config_problem, docker
from deploys.driver_upgrade import prepare_driver_change
from deploys.nvidia_container import container_toolkit_packages, nvidia_container_toolkit
from deploys.nvidia_driver import DRIVER_PACKAGE_PATTERNS, driver_packages, nvidia_driver
from deploys.settings import DATA_DEFAULTS, GpuSettings, read_settings
from deploys.verify import verify
from facts.gpu_host import GpuHostState


def managed_packages(settings: GpuSettings) -> list[str]:
    """Every package gpufleet pins, and every driver branch's, for the one-round-trip host read."""
    packages = {
        **dict.fromkeys(DRIVER_PACKAGE_PATTERNS),
        **driver_packages(settings.nvidia_driver_branch, settings.nvidia_driver_version),
        compat.cuda_package_name(settings.cuda_version): None,
        **cudnn_packages(settings.cudnn_version, settings.cuda_version),
        **container_toolkit_packages(settings.nvidia_container_toolkit_version),
        settings.docker_package: None,
    }
    return sorted(packages)


@deploy("gpufleet GPU host", data_defaults=DATA_DEFAULTS)
def gpu_host() -> None:
    settings = read_settings(host.data)
    host_state = host.get_fact(GpuHostState, packages=managed_packages(settings))
    platform = compat.HostPlatform.from_os_release(host_state["os_release"])
    problems = compat.check_stack(settings.stack_request, platform)
    daemon_problem = daemon_config_problem(
        DAEMON_JSON_PATH, host_state["docker_daemon_config"]["parse_error"]
    )
    if daemon_problem:
        problems.append(daemon_problem)
    compat.refuse(host.name, problems)
    if not prepare_driver_change(settings, host_state):
        return

    cuda_repository(settings=settings, host_state=host_state)
    nvidia_driver(settings=settings, host_state=host_state)
    cuda_toolkit(settings=settings)
    cudnn(settings=settings)
    nvidia_container_toolkit(settings=settings)
    docker(settings=settings)
    if settings.gpu_verify:
        verify(settings=settings)


# `pyinfra INVENTORY deploys/gpu_host.py` executes this file instead of importing it.
if __name__ != "deploys.gpu_host":
    gpu_host()
