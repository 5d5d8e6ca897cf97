"""
gpufleet's main deploy: a bare apt-based host to a pinned, held, configured NVIDIA stack.

    pyinfra inventories/<fleet>.py deploys/gpu_host.py

Before the first operation it reads the host in one round trip and checks the requested stack
against the compatibility planner; a refused host is left exactly as it was. That read covers
everything the operations check (facts/snapshot.py), so a converged host costs no other. At the
end it verifies the host (deploys/verify.py) unless `gpu_verify` is false.
"""

from __future__ import annotations

from typing import Any

from pyinfra import host
from pyinfra.api import deploy

from deploys import compat
from deploys.apt import repository_files
from deploys.cuda import CUDA_REPO_NAME, cuda_repository, cuda_toolkit, environment_files
from deploys.cudnn import cudnn, cudnn_packages
from deploys.docker import DAEMON_JSON_PATH, DOCKER_SERVICE, daemon_config_problem, docker
from deploys.driver_upgrade import prepare_driver_change
from deploys.nvidia_container import (
    CONTAINER_REPO_NAME,
    container_toolkit_packages,
    nvidia_container_toolkit,
)
from deploys.nvidia_driver import (
    DRIVER_PACKAGE_PATTERNS,
    KERNEL_HEADERS_PATTERN,
    NOUVEAU_BLACKLIST_PATH,
    PERSISTENCED_BOOT_LINK,
    PERSISTENCED_DROPIN_PATH,
    PERSISTENCED_SERVICE,
    driver_packages,
    nvidia_driver,
)
from deploys.settings import DATA_DEFAULTS, GpuSettings, read_settings
from deploys.verify import HOST_TEST_PACKAGES, verify
from facts import snapshot


def managed_packages(settings: GpuSettings) -> list[str]:
    """Every package gpufleet installs, and every driver branch's, for the one host read."""
    packages = {
        **dict.fromkeys(DRIVER_PACKAGE_PATTERNS),
        **driver_packages(settings.nvidia_driver_branch, settings.nvidia_driver_version),
        KERNEL_HEADERS_PATTERN: None,
        compat.cuda_package_name(settings.cuda_version): None,
        **cudnn_packages(settings.cudnn_version, settings.cuda_version),
        **container_toolkit_packages(settings.nvidia_container_toolkit_version),
        settings.docker_package: None,
        **(dict.fromkeys(HOST_TEST_PACKAGES) if settings.tensorflow_host_test else {}),
    }
    return sorted(packages)


def managed_state(settings: GpuSettings) -> dict[str, Any]:
    """GpuHostState's arguments: everything the deploy's operations check on the host."""
    files = [
        *repository_files(CUDA_REPO_NAME),
        *repository_files(CONTAINER_REPO_NAME),
        NOUVEAU_BLACKLIST_PATH,
        PERSISTENCED_DROPIN_PATH,
        *environment_files(settings.cuda_version),
    ]
    return {
        "packages": managed_packages(settings),
        "daemon_json_path": DAEMON_JSON_PATH,
        "files": sorted(files),
        "symlinks": [PERSISTENCED_BOOT_LINK],
        "units": [DOCKER_SERVICE, PERSISTENCED_SERVICE],
    }


@deploy("gpufleet GPU host", data_defaults=DATA_DEFAULTS)
def gpu_host() -> None:
    settings = read_settings(host.data)
    host_state = snapshot.take(**managed_state(settings))
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
