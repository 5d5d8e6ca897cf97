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

from gpufleet.deploys.cuda import (
    CUDA_REPO_NAME,
    cuda_repository,
    cuda_toolkit,
    environment_files,
)
from gpufleet.deploys.cudnn import cudnn, cudnn_packages
from gpufleet.deploys.docker import (
    DAEMON_JSON_PATH,
    DOCKER_SERVICE,
    daemon_config_problem,
    docker,
    merge_daemon_config,
    render_daemon_config,
    restart_reason,
    restart_refusal,
)
from gpufleet.deploys.driver_upgrade import prepare_driver_change
from gpufleet.deploys.nvidia_container import (
    CONTAINER_REPO_NAME,
    container_toolkit_packages,
    nvidia_container_toolkit,
)
from gpufleet.deploys.nvidia_driver import (
    DRIVER_PACKAGE_PATTERNS,
    KERNEL_HEADERS_PATTERN,
    NOUVEAU_BLACKLIST_PATH,
    PERSISTENCED_BOOT_LINK,
    PERSISTENCED_DROPIN_PATH,
    PERSISTENCED_SERVICE,
    driver_packages,
    nvidia_driver,
)
from gpufleet.deploys.verify import HOST_TEST_PACKAGES, verify
from gpufleet.facts import snapshot
from gpufleet.facts.docker import parse_daemon_json
from gpufleet.facts.gpu_host import GpuHostStateInfo
from gpufleet.operations.packages import auth_file, repository_files
from gpufleet.preflight import logger, refuse_host, repository_keyrings
from gpufleet.settings import DATA_DEFAULTS, GpuSettings, SettingsError, read_settings
from gpufleet.stack import compat, urls


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
    """
    GpuHostState's arguments: everything the deploy's operations check on the host. Without a
    mirror, the CUDA repository's URL depends on the OS release, which this read tells: the
    sources are searched for NVIDIA's repository of every release.
    """
    files = [
        *repository_files(CUDA_REPO_NAME),
        *repository_files(CONTAINER_REPO_NAME),
        auth_file(CUDA_REPO_NAME),
        auth_file(CONTAINER_REPO_NAME),
        NOUVEAU_BLACKLIST_PATH,
        PERSISTENCED_DROPIN_PATH,
        *environment_files(settings.cuda_version),
    ]
    cuda_urls = (
        [settings.nvidia_cuda_repo_url]
        if settings.nvidia_cuda_repo_url
        else [compat.cuda_repo_url(release) for release in compat.CUDA_REPO_RELEASES]
    )
    repository_urls = [settings.nvidia_container_repo_url, *cuda_urls]
    return {
        "packages": managed_packages(settings),
        "repository_locations": sorted(urls.location(url) for url in repository_urls),
        "daemon_json_path": DAEMON_JSON_PATH,
        "files": sorted(files),
        "symlinks": [PERSISTENCED_BOOT_LINK],
        "units": [DOCKER_SERVICE, PERSISTENCED_SERVICE],
    }


def docker_problems(settings: GpuSettings, host_state: GpuHostStateInfo) -> list[str]:
    """daemon.json that dockerd could not read, or a restart that would stop running jobs."""
    daemon = host_state["docker_daemon_config"]
    problem = daemon_config_problem(DAEMON_JSON_PATH, daemon["parse_error"])
    if problem:
        return [problem]
    wanted = merge_daemon_config(
        daemon["config"] or {},
        settings.docker_default_runtime,
        settings.docker_daemon_config,
        daemon["managed_keys"],
    )
    try:
        parse_daemon_json(render_daemon_config(wanted.config).decode())
    except ValueError as error:
        return [
            f"docker_daemon_config = {settings.docker_daemon_config!r} would make a daemon.json "
            f"that dockerd cannot read: {error}"
        ]
    info = host_state["docker_info"]
    reason = restart_reason(daemon, wanted, info)
    refusal = restart_refusal(
        reason,
        info,
        host_state["gpu_users"]["containers"],
        settings.docker_restart_with_running_containers,
    )
    if refusal:
        return [refusal]
    if reason and info and info["live_restore"] and info["containers_running"]:
        host.log_styled(
            f"docker restarts ({reason}); live-restore keeps its "
            f"{info['containers_running']} running container(s) running",
            fg="cyan",
            log_func=logger.info,
        )
    return []


@deploy("gpufleet GPU host", data_defaults=DATA_DEFAULTS)
def gpu_host() -> None:
    try:
        settings = read_settings(host.data)
    except SettingsError as error:
        refuse_host([str(error)])
        return
    for warning in settings.warnings:
        host.log_styled(warning, fg="yellow", log_func=logger.warning)
    host_state = snapshot.take(**managed_state(settings))
    platform = compat.HostPlatform.from_os_release(host_state["os_release"])
    problems = compat.check_stack(settings.stack_request, platform)
    problems += docker_problems(settings, host_state)
    keyrings: dict[str, bytes] = {}
    if not problems:
        keyrings, key_problems = repository_keyrings(
            settings, platform, (CUDA_REPO_NAME, CONTAINER_REPO_NAME)
        )
        problems += key_problems
    if problems:
        refuse_host(problems)
        return
    if not prepare_driver_change(settings, host_state):
        return

    cuda_repository(url=settings.cuda_repo_url(platform), keyring=keyrings[CUDA_REPO_NAME])
    nvidia_driver(settings=settings, host_state=host_state)
    cuda_toolkit(settings=settings)
    cudnn(settings=settings)
    nvidia_container_toolkit(settings=settings, keyring=keyrings[CONTAINER_REPO_NAME])
    docker(
        docker_package=settings.docker_package,
        default_runtime=settings.docker_default_runtime,
        daemon_settings=settings.docker_daemon_config,
        lock_timeout=settings.gpu_apt_lock_timeout,
    )
    if settings.gpu_verify:
        verify(settings=settings)
