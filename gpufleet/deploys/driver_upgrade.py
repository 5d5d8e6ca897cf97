"""
Changing the NVIDIA driver version of GPU hosts that may be running jobs: upgrades and
downgrades (a bad release is rolled back by pinning the older one) and branch changes.

    python -m gpufleet.rollout inventories/<fleet>.py            # batches; stops at a failed one
    pyinfra inventories/<fleet>.py deploys/driver_upgrade.py --dry   # the plan, per host

For each host: read it in one round trip; refuse it while processes or containers use its GPUs
(with upgrade_drain, stop those containers first); change the driver family to the pin, held
throughout; load the new kernel module (reload, reboot, or stop with "reboot required"); verify.
deploys/gpu_host.py takes the same path whenever its pinned driver is not the running one.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from gpufleet.deploys.cuda import CUDA_REPO_NAME, cuda_repository
from gpufleet.deploys.nvidia_driver import (
    DKMS_SIGNING_PATH,
    can_reload_modules,
    installed_driver_version,
    module_change_reason,
    nvidia_driver,
)
from gpufleet.deploys.verify import verify_host
from gpufleet.facts import snapshot
from gpufleet.facts.gpu_host import GpuHostStateInfo
from gpufleet.facts.gpu_users import GpuContainer, container_uses_gpus
from gpufleet.preflight import (
    offered_packages,
    plan_or_refusal,
    refuse_host,
    settings_or_refusal,
    signing_files,
)
from gpufleet.settings import DATA_DEFAULTS, GpuSettings
from gpufleet.stack import catalog
from gpufleet.stack.versions import version_direction

logger = logging.getLogger("pyinfra")


@dataclass(frozen=True)
class DriverChange:
    """What a host's driver change involves, as `--dry` lists it."""

    current_version: str | None
    target_version: str
    # Processes on the GPUs, as "pid NAME (container NAME)" descriptions.
    gpu_processes: list[str]
    # Containers to stop before the change (running with GPUs, or holding a GPU process).
    gpu_containers: list[GpuContainer]
    # GPU processes in no container: drain cannot stop them.
    uncontained_processes: list[str]
    # Why the kernel module must change, and whether that means a reboot (not a reload).
    module_reason: str | None
    reboot_needed: bool

    @property
    def gpu_users(self) -> list[str]:
        containers = [
            f"container {c['name']} ({c['id'][:12]}, {c['image']})" for c in self.gpu_containers
        ]
        return [*(f"process {p}" for p in self.gpu_processes), *containers]

    def summary(self, pin_source: str = "") -> str:
        """The change in one line; ``pin_source`` says where the target version comes from."""
        users = "; ".join(self.gpu_users) or "none"
        if self.module_reason is None:
            module = "no module change"
        else:
            how = "reboot" if self.reboot_needed else "module reload"
            module = f"{how} needed ({self.module_reason})"
        source = f" ({pin_source})" if pin_source else ""
        return f"{self.version_change}{source}; GPU users: {users}; {module}"

    @property
    def version_change(self) -> str:
        """How the version moves, e.g. "driver downgrade 470.239.06 -> 470.182.03"."""
        current, target = self.current_version, self.target_version
        if current is None or current == target:
            return f"driver {current or 'not installed'} -> {target}"
        return f"driver {version_direction(current, target)} {current} -> {target}"


def plan_driver_change(
    driver: catalog.DriverChoice, host_state: GpuHostStateInfo
) -> DriverChange | None:
    """The host's pending driver change, or None when it runs the pinned driver already."""
    current = installed_driver_version(host_state["packages"])
    target = driver.version
    kernel, smi = host_state["nvidia_kernel"], host_state["nvidia_smi"]
    module_reason = module_change_reason(kernel, smi, driver, host_state["kernel_release"])
    if current in (None, target) and module_reason is None:
        return None

    users = host_state["gpu_users"]
    docker_info = host_state["docker_info"]
    default_runtime = docker_info["default_runtime"] if docker_info else ""
    by_id = {container["id"]: container for container in users["containers"]}
    stop_ids = {c["id"] for c in users["containers"] if container_uses_gpus(c, default_runtime)}
    processes, uncontained = [], []
    for process in smi["processes"] if smi else []:
        container_id = users["process_containers"].get(process["pid"])
        description = f"{process['pid']} {process['process_name']}"
        if container_id in by_id:
            stop_ids.add(container_id)
            description += f" (container {by_id[container_id]['name']})"
        else:
            uncontained.append(description)
        processes.append(description)
    return DriverChange(
        current_version=current,
        target_version=target,
        gpu_processes=processes,
        gpu_containers=[by_id[container_id] for container_id in sorted(stop_ids)],
        uncontained_processes=uncontained,
        module_reason=module_reason,
        reboot_needed=module_reason is not None and not can_reload_modules(kernel),
    )


def refusal(change: DriverChange, drain: bool) -> str | None:
    """Why the host must be left alone, or None when its GPUs are free (or can be drained)."""
    if not change.gpu_users:
        return None
    if not drain:
        return (
            f"refusing to change the driver, the GPUs are in use: {'; '.join(change.gpu_users)}. "
            "Wait for the jobs to end, or set upgrade_drain: true to stop these containers."
        )
    if change.uncontained_processes:
        return (
            "refusing to change the driver: upgrade_drain stops containers only, and these GPU "
            f"processes run in none: {'; '.join(change.uncontained_processes)}"
        )
    return None


def prepare_driver_change(
    settings: GpuSettings,
    driver: catalog.DriverChoice,
    host_state: GpuHostStateInfo,
    pin_source: str = "",
) -> bool:
    """
    Log the host's pending driver change, then refuse it (the other hosts carry on) or drain
    its GPU containers. Returns whether the deploy may go on. ``pin_source`` says where the
    pinned version comes from ("the inventory's pin"): a downgrade is then said loudly, since
    a routine run undoing a rollout's override is what it usually means.
    """
    change = plan_driver_change(driver, host_state)
    if change is None:
        return True
    if "downgrade" in change.version_change:
        host.log_styled(change.summary(pin_source), fg="yellow", bold=True, log_func=logger.warning)
    else:
        host.log_styled(change.summary(pin_source), fg="cyan", log_func=logger.info)
    reason = refusal(change, settings.upgrade_drain)
    if reason is not None:
        refuse_host([reason])
        return False
    if change.gpu_containers:
        names = [container["name"] for container in change.gpu_containers]
        server.shell(
            name=f"Drain: stop the containers using the GPUs ({', '.join(names)})",
            commands=[
                "docker stop "
                + " ".join(shlex.quote(container["id"]) for container in change.gpu_containers)
            ],
        )
    return True


@deploy("gpufleet driver upgrade", data_defaults=DATA_DEFAULTS)
def driver_upgrade() -> None:
    settings = settings_or_refusal(host.data)
    if settings is None:
        return
    host_state = snapshot.take(
        packages=list(catalog.DRIVER_PACKAGE_PATTERNS),
        offered_packages=offered_packages(settings),
        files=[DKMS_SIGNING_PATH, *signing_files(settings).values()],
    )
    planned = plan_or_refusal(settings, host_state, [], (CUDA_REPO_NAME,))
    if planned is None:
        return
    plan, keyrings = planned
    if not prepare_driver_change(settings, plan.driver, host_state):
        return
    cuda_repository(url=plan.repository_url, keyring=keyrings[CUDA_REPO_NAME])
    install_driver(settings, plan.driver, host_state)
    verify_host(
        settings=settings,
        driver_version=plan.driver.version,
        smoke_test=settings.upgrade_smoke_test,
    )


def install_driver(
    settings: GpuSettings, driver: catalog.DriverChoice, host_state: GpuHostStateInfo
) -> None:
    """The pinned driver, on a host read with every branch's driver packages."""
    nvidia_driver(
        driver=driver,
        host_state=host_state,
        reboot_allowed=settings.gpu_reboot_allowed,
        lock_timeout=settings.gpu_apt_lock_timeout,
        module_signing=settings.module_signing,
    )
