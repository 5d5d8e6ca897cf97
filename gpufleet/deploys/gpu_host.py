"""
gpufleet's main deploy: a bare apt-based host to a pinned, held, configured NVIDIA stack.

    pyinfra inventories/<fleet>.py deploys/gpu_host.py

Before the first operation it reads the host in one round trip and checks the requested stack
against the compatibility planner; a refused host is left exactly as it was. That read covers
everything the operations check (gpufleet/facts/snapshot.py), so a converged host costs no other.
At the end it verifies the host (gpufleet.deploys.verify) unless `gpu_verify` is false.
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
from gpufleet.deploys.cudnn import cudnn
from gpufleet.deploys.dcgm import dcgm
from gpufleet.deploys.docker import docker
from gpufleet.deploys.driver_upgrade import install_driver, prepare_driver_change
from gpufleet.deploys.mig import mig_layouts, no_mig_layouts
from gpufleet.deploys.nccl import nccl_conf
from gpufleet.deploys.nvidia_container import CONTAINER_REPO_NAME, nvidia_container_toolkit
from gpufleet.deploys.nvidia_driver import (
    DKMS_SIGNING_PATH,
    NOUVEAU_BLACKLIST_PATH,
    PERSISTENCED_BOOT_LINK,
    PERSISTENCED_DROPIN_PATH,
    PERSISTENCED_SERVICE,
    UNATTENDED_UPGRADES_PATH,
)
from gpufleet.deploys.verify import pinned_package_names, verify_host
from gpufleet.facts import snapshot
from gpufleet.facts.docker import parse_daemon_json
from gpufleet.facts.gpu_host import GpuHostStateInfo
from gpufleet.operations import artifacts
from gpufleet.operations.docker_daemon import DOCKER_SERVICE
from gpufleet.operations.packages import auth_file, repository_files
from gpufleet.preflight import (
    artifacts_or_refusal,
    logger,
    offered_packages,
    plan_or_refusal,
    repository_urls,
    settings_or_refusal,
    signing_files,
)
from gpufleet.settings import DATA_DEFAULTS, GpuSettings
from gpufleet.stack import catalog, installers, mig, urls
from gpufleet.stack.accounts import ADDED_USERS_PATH, missing_users_problem
from gpufleet.stack.daemon_json import (
    DAEMON_JSON_PATH,
    daemon_config_problem,
    merge_daemon_config,
    render_daemon_config,
    restart_reason,
    restart_refusal,
)
from gpufleet.stack.dcgm import DCGM_SERVICE
from gpufleet.stack.hardware import PciBus
from gpufleet.stack.installers import CudaInstallMethod, CudnnInstallMethod
from gpufleet.stack.nccl import NCCL_CONF_PATH, interface_problem


def managed_packages(settings: GpuSettings) -> list[str]:
    """Every package gpufleet installs, and every driver branch's, for the one host read."""
    packages = {
        *pinned_package_names(settings),
        catalog.KERNEL_HEADERS_PATTERN,
        settings.docker_package,
        *(catalog.HOST_TEST_PACKAGES if settings.tensorflow_host_test else ()),
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
        UNATTENDED_UPGRADES_PATH,
        *environment_files(settings.cuda_version),
        DKMS_SIGNING_PATH,
        *signing_files(settings).values(),
        ADDED_USERS_PATH,
        NCCL_CONF_PATH,
        mig.LAYOUTS_PATH,
        mig.UNIT_PATH,
        mig.SCRIPT_PATH,
    ]
    return {
        "packages": managed_packages(settings),
        "repository_locations": sorted(urls.location(url) for url in repository_urls(settings)),
        "offered_packages": offered_packages(settings),
        "daemon_json_path": DAEMON_JSON_PATH,
        "files": sorted(files),
        "symlinks": [PERSISTENCED_BOOT_LINK, mig.BOOT_LINK],
        "units": [
            DOCKER_SERVICE,
            PERSISTENCED_SERVICE,
            catalog.FABRIC_MANAGER_SERVICE,
            DCGM_SERVICE,
        ],
        "toolkit_path": installers.toolkit_path(settings.cuda_version),
        "image": settings.tensorflow_image,
        "artifact_folder": installers.HOST_ARTIFACT_DIR,
        "users": settings.docker_users,
        "mig": bool(settings.gpu_mig_layouts),
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


def host_settings_problems(settings: GpuSettings, host_state: GpuHostStateInfo) -> list[str]:
    """docker_users the host has no user of, an NCCL interface list that selects none of its."""
    problems = [
        missing_users_problem(settings.docker_users, host_state["docker_group"]["existing_users"]),
        interface_problem(settings.nccl_socket_ifname, host_state["network_interfaces"]),
    ]
    return [problem for problem in problems if problem]


def mig_problems(settings: GpuSettings, host_state: GpuHostStateInfo) -> list[str]:
    """Layouts a GPU cannot hold, GPUs the host lacks, and layout changes on GPUs in use."""
    layouts = settings.gpu_mig_layouts
    if not layouts:
        return []
    # nvidia-smi numbers the GPUs in PCI bus order, so the bus tells the indexes before any
    # driver is installed.
    gpus = sorted(PciBus.from_devices(host_state["pci_devices"]).gpus, key=lambda gpu: gpu.address)
    problems = []
    for index, profiles in sorted(layouts.items()):
        if index >= len(gpus):
            problems.append(
                f"gpu_mig_layouts[{index}]: the host has {len(gpus)} GPU(s) on its PCI bus "
                f"(indexes 0 to {len(gpus) - 1}); leave GPU {index} out"
                if gpus
                else f"gpu_mig_layouts[{index}]: the host has no NVIDIA GPU on its PCI bus"
            )
            continue
        gpu = gpus[index]
        name = gpu.model.name if gpu.model else f"PCI device 10de:{gpu.device_id}"
        problem = profiles and mig.layout_problem(
            "gpu_mig_layouts", index, name, gpu.device_id, profiles
        )
        if problem:
            problems.append(problem)
    smi = host_state["nvidia_smi"]
    if problems or not smi:
        return problems
    unmet = mig.unmet_on_gpus(layouts, smi["gpus"], host_state["mig_instances"])
    indexes = {gpu["uuid"]: gpu["index"] for gpu in smi["gpus"]}
    for process in smi["processes"]:
        in_use = indexes.get(process["gpu_uuid"])
        if in_use in unmet:
            problems.append(
                f"gpu_mig_layouts[{in_use}]: GPU {in_use} runs {process['process_name']} (pid "
                f"{process['pid']}) and its layout would change ({unmet[in_use]}); re-run when "
                "nothing runs on it"
            )
    return problems


@deploy("gpufleet GPU host", data_defaults=DATA_DEFAULTS)
def gpu_host() -> None:
    settings = settings_or_refusal(host.data)
    if settings is None:
        return
    host_state = snapshot.take(**managed_state(settings))
    planned = plan_or_refusal(
        settings,
        host_state,
        [
            *docker_problems(settings, host_state),
            *host_settings_problems(settings, host_state),
            *mig_problems(settings, host_state),
        ],
        (CUDA_REPO_NAME, CONTAINER_REPO_NAME),
    )
    if planned is None:
        return
    plan, keyrings = planned
    to_send = artifacts_or_refusal(settings, plan, host_state)
    if to_send is None:
        return
    if not prepare_driver_change(settings, plan.driver, host_state, "the inventory's pin"):
        return

    cuda_repository(url=plan.repository_url, keyring=keyrings[CUDA_REPO_NAME])
    install_driver(settings, plan.driver, host_state)
    runfile = plan.methods.cuda is CudaInstallMethod.RUNFILE
    cuda_toolkit(
        cuda_version=settings.cuda_version,
        package_version=settings.cuda_package_version,
        lock_timeout=settings.gpu_apt_lock_timeout,
        runfile_sha256=settings.cuda_runfile_sha256 if runfile else None,
        runfile_to_send=to_send.get("cuda_runfile"),
    )
    archive = plan.methods.cudnn is CudnnInstallMethod.ARCHIVE
    cudnn(
        version=settings.cudnn_version,
        cuda_version=settings.cuda_version,
        lock_timeout=settings.gpu_apt_lock_timeout,
        archive_sha256=settings.cudnn_archive_sha256 if archive else None,
        archive_to_send=to_send.get("cudnn_archive"),
    )
    nvidia_container_toolkit(
        version=settings.nvidia_container_toolkit_version,
        repo_url=settings.nvidia_container_repo_url,
        keyring=keyrings[CONTAINER_REPO_NAME],
        lock_timeout=settings.gpu_apt_lock_timeout,
    )
    docker(
        docker_package=settings.docker_package,
        default_runtime=settings.docker_default_runtime,
        daemon_settings=settings.docker_daemon_config,
        lock_timeout=settings.gpu_apt_lock_timeout,
        users=settings.docker_users,
    )
    if settings.nccl_settings.wanted:
        nccl_conf(settings=settings.nccl_settings)
    if settings.gpu_mig_layouts:
        mig_layouts(layouts=settings.mig_creation_layouts)
    elif mig.LAYOUTS_PATH in host_state["file_digests"]:
        no_mig_layouts()
    if settings.gpu_dcgm:
        bus = PciBus.from_devices(host_state["pci_devices"])
        dcgm(
            driver_branch=plan.driver.branch,
            architectures={model.architecture for _, model in bus.known},
            lock_timeout=settings.gpu_apt_lock_timeout,
        )
    image_archive = settings.tensorflow_image_archive_sha256
    if settings.gpu_verify and not image_archive:
        artifacts.pulled_image(
            name=f"{settings.tensorflow_image} available (docker pull)",
            image=settings.tensorflow_image,
            timeout=settings.tensorflow_image_pull_timeout,
            registry_mirror=settings.tensorflow_image_registry_mirror,
        )
    if image_archive:
        artifacts.received(
            name=f"Send the {settings.tensorflow_image} archive",
            local_path=to_send.get("tensorflow_image_archive"),
            sha256=image_archive,
        )
        artifacts.loaded_image(
            name=f"{settings.tensorflow_image} (from its archive)",
            image=settings.tensorflow_image,
            sha256=image_archive,
        )
    if settings.gpu_verify:
        verify_host(
            settings=settings,
            driver_version=plan.driver.version,
            smoke_test=settings.gpu_smoke_test,
        )
