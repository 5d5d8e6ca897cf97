"""
The NVIDIA driver from NVIDIA's CUDA repository, pinned to an exact version and held.

`cuda-drivers-<branch>` depends on `nvidia-driver-<branch> (>= X)` and friends, so pinning the
metapackage alone would still pull the newest driver of the branch: every package of the family
is pinned to the same version.
"""

from __future__ import annotations

import logging
import re
import shlex
import time

from pyinfra import host
from pyinfra.api import FunctionCommand, StringCommand, deploy, operation
from pyinfra.api.exceptions import OperationError
from pyinfra.operations import server
from pyinfra.operations.systemd import daemon_reload
from pyinfra.operations.util import any_changed

from gpufleet.facts.apt import DebPackageState
from gpufleet.facts.gpu_host import GpuHostState, GpuHostStateInfo
from gpufleet.facts.nvidia import NvidiaKernelInfo, NvidiaSmiInfo
from gpufleet.operations import managed_files as files
from gpufleet.operations import packages as apt
from gpufleet.operations import units as systemd
from gpufleet.settings import DATA_DEFAULTS, GpuSettings, read_settings

# The driver family of one branch, as NVIDIA's Ubuntu driver packages name it.
DRIVER_PACKAGE_FAMILY = (
    "cuda-drivers-{branch}",
    "nvidia-driver-{branch}",
    "nvidia-dkms-{branch}",
    "nvidia-kernel-common-{branch}",
    "nvidia-kernel-source-{branch}",
    "nvidia-utils-{branch}",
    "nvidia-compute-utils-{branch}",
    "libnvidia-compute-{branch}",
    "libnvidia-gl-{branch}",
    "libnvidia-common-{branch}",
    "libnvidia-extra-{branch}",
    "libnvidia-decode-{branch}",
    "libnvidia-encode-{branch}",
    "libnvidia-cfg1-{branch}",
    "libnvidia-ifr1-{branch}",
    "libnvidia-fbc1-{branch}",
    "xserver-xorg-video-nvidia-{branch}",
)

# NvIFR (libnvidia-ifr1-<branch>) was dropped from the driver in R495.
LAST_BRANCH_WITH_IFR = 470
# Every installed driver branch, whatever the pin: a glob per family member for dpkg-query.
DRIVER_PACKAGE_PATTERNS = tuple(name.format(branch="[0-9]*") for name in DRIVER_PACKAGE_FAMILY)
_FAMILY_MEMBER = re.compile(
    "|".join(re.escape(name).replace(r"\{branch\}", r"(\d+)") for name in DRIVER_PACKAGE_FAMILY)
)
# nvidia-smi's words when the loaded kernel module is not the installed libraries' version.
VERSION_MISMATCH = "Driver/library version mismatch"
# Dependent modules first: the order `modprobe -r` needs.
MODULE_UNLOAD_ORDER = ("nvidia_drm", "nvidia_modeset", "nvidia_uvm", "nvidia")

NOUVEAU_BLACKLIST_PATH = "/etc/modprobe.d/blacklist-nouveau.conf"
NOUVEAU_BLACKLIST = (
    "# Managed by gpufleet: the NVIDIA driver cannot load beside nouveau.\n"
    "blacklist nouveau\noptions nouveau modeset=0\n"
)

# Ubuntu's unit runs the daemon with --no-persistence-mode, stops when unneeded and has no
# [Install] section (udev starts it): gpufleet wants persistence mode on and the daemon up at boot.
PERSISTENCED_DROPIN_PATH = "/etc/systemd/system/nvidia-persistenced.service.d/gpufleet.conf"
PERSISTENCED_DROPIN = (
    "# Managed by gpufleet: keep the GPUs initialised between jobs.\n"
    "[Unit]\nStopWhenUnneeded=false\n\n"
    "[Service]\nExecStart=\n"
    "ExecStart=/usr/bin/nvidia-persistenced"
    " --user nvidia-persistenced --persistence-mode --verbose\n"
)
PERSISTENCE_MODE = "--persistence-mode"
PERSISTENCED_SERVICE = "nvidia-persistenced.service"
PERSISTENCED_BOOT_LINK = f"/etc/systemd/system/multi-user.target.wants/{PERSISTENCED_SERVICE}"
PERSISTENCED_UNIT = f"/lib/systemd/system/{PERSISTENCED_SERVICE}"
# Every versioned kernel's headers package: the running kernel's is among them.
KERNEL_HEADERS_PATTERN = "linux-headers-[0-9]*"

logger = logging.getLogger("pyinfra")


def driver_packages(branch: str, version: str) -> dict[str, str | None]:
    """Every package of the branch's family, pinned to one upstream version (any revision)."""
    return {
        name.format(branch=branch): f"{version}-*"
        for name in DRIVER_PACKAGE_FAMILY
        if name != "libnvidia-ifr1-{branch}" or int(branch) <= LAST_BRANCH_WITH_IFR
    }


def upstream_version(debian_version: str) -> str:
    """``470.182.03-1`` -> ``470.182.03`` (epoch and Debian revision dropped)."""
    return debian_version.split(":")[-1].rsplit("-", 1)[0]


def installed_driver_version(packages: dict[str, DebPackageState]) -> str | None:
    """The upstream version of the installed nvidia-driver-<branch>, None without one."""
    for name, state in sorted(packages.items()):
        if re.fullmatch(r"nvidia-driver-\d+", name) and state["installed"]:
            return upstream_version(state["version"])
    return None


def replaced_driver_packages(packages: dict[str, DebPackageState], branch: str) -> list[str]:
    """Installed or held packages of another branch's driver family (a branch change)."""
    return sorted(
        name
        for name, state in packages.items()
        if (state["installed"] or state["held"])
        and (member := _FAMILY_MEMBER.fullmatch(name))
        and next(b for b in member.groups() if b) != branch
    )


def loaded_module_version(kernel: NvidiaKernelInfo, smi: NvidiaSmiInfo | None) -> str | None:
    """
    The NVIDIA kernel module version running now: /proc/driver/nvidia/version, or else the
    driver version nvidia-smi reports (NVML reads it from the loaded module).
    """
    if kernel["loaded_driver_version"]:
        return kernel["loaded_driver_version"]
    if smi is not None and smi["error"] is None:
        return smi["driver_version"]
    return None


def module_change_reason(
    kernel: NvidiaKernelInfo, smi: NvidiaSmiInfo | None, driver_version: str
) -> str | None:
    """Why the running kernel does not have the pinned driver's module, None when it does."""
    if kernel["nouveau_loaded"]:
        return "the nouveau module is loaded; the NVIDIA driver can only load after a reboot"
    if smi is not None and VERSION_MISMATCH in (smi["error"] or ""):
        return f"the loaded kernel module is not the installed driver's ({VERSION_MISMATCH})"
    loaded = loaded_module_version(kernel, smi)
    if loaded and loaded != driver_version:
        return f"kernel module {loaded} is loaded, {driver_version} is pinned"
    return None


def can_reload_modules(kernel: NvidiaKernelInfo) -> bool:
    """modprobe can only swap modules the kernel lists (not nouveau, which needs a reboot)."""
    return bool(kernel["nvidia_modules"]) and not kernel["nouveau_loaded"]


def reload_modules_command(loaded_modules: list[str]) -> str:
    """
    Unload the NVIDIA modules and load the installed ones, with nvidia-persistenced (which holds
    the devices open) stopped meanwhile. The kernel refuses to unload a module still in use.
    """
    unload = [name for name in MODULE_UNLOAD_ORDER if name in loaded_modules]
    return (
        "systemctl stop nvidia-persistenced; "
        f"if modprobe -r {' '.join(unload)}; then modprobe -a {' '.join(reversed(unload))}; "
        "status=$?; else status=1; echo "
        + shlex.quote("the NVIDIA kernel modules are still in use: reboot required")
        + " >&2; fi; systemctl start nvidia-persistenced; exit $status"
    )


BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def boot_id(host) -> str | None:
    succeeded, output = host.run_shell_command(StringCommand("cat", BOOT_ID_PATH))
    return output.stdout.strip() if succeeded else None


@operation(is_idempotent=False)
def reboot(reboot_timeout: int = 600, interval: float = 2.0):
    """
    Reboot the host and wait until it is back, with a new boot id.

    + reboot_timeout: seconds to wait for the host to come back
    + interval: seconds between reconnection attempts

    Unlike pyinfra's server.reboot, which compares uptimes, this also works in containers and
    VMs that show the machine's /proc/uptime (the kernel gives every boot, and systemd-nspawn
    every container boot, a new boot id).
    """
    boot_ids: list[str | None] = []
    yield FunctionCommand(lambda state, host: boot_ids.append(boot_id(host)), (), {})
    # Detached, so the ssh channel closes before the connection dies.
    yield StringCommand("( sleep 1 && reboot ) </dev/null >/dev/null 2>&1 &")

    def wait_for_new_boot(state, host) -> bool:
        host.disconnect()
        deadline = time.monotonic() + reboot_timeout
        while time.monotonic() < deadline:
            time.sleep(interval)
            host.connect(show_errors=False)
            if host.connected and boot_id(host) not in (None, boot_ids[0]):
                return True
        raise OperationError(f"the host did not come back within {reboot_timeout}s")

    yield FunctionCommand(wait_for_new_boot, (), {})


@operation()
def reboot_required(reason: str):
    """
    Stop the host: the driver needs a reboot gpufleet may not do.

    + reason: why the reboot is needed
    """
    message = (
        f"REBOOT REQUIRED ({reason}); gpu_reboot_allowed is false, so gpufleet did not reboot. "
        "Reboot the host when its jobs allow, or re-run with gpu_reboot_allowed: true."
    )

    def stop(state, host) -> bool:
        host.log_styled(message, fg="yellow", bold=True, log_func=logger.error)
        return False

    yield FunctionCommand(stop, (), {})


@deploy("Load the pinned NVIDIA kernel module")
def activate_driver(settings: GpuSettings, host_state: GpuHostStateInfo) -> None:
    """Reload the NVIDIA modules when nothing holds them, or reboot, or stop the host."""
    kernel = host_state["nvidia_kernel"]
    # The loaded module only changes at a reload or a reboot, so this need does not depend on
    # whether this run changed anything: an earlier run may have installed and stopped.
    reason = module_change_reason(kernel, host_state["nvidia_smi"], settings.nvidia_driver_version)
    if reason is None:
        return
    if can_reload_modules(kernel):
        server.shell(
            name=f"Reload the NVIDIA kernel modules: {reason}",
            commands=[reload_modules_command(list(kernel["nvidia_modules"]))],
        )
    elif settings.gpu_reboot_allowed:
        reboot(name=f"Reboot: {reason}")
    else:
        reboot_required(name="Reboot required", reason=reason)


@deploy("NVIDIA driver", data_defaults=DATA_DEFAULTS)
def nvidia_driver(
    settings: GpuSettings | None = None, host_state: GpuHostStateInfo | None = None
) -> None:
    settings = settings or read_settings(host.data)
    host_state = host_state or host.get_fact(GpuHostState, packages=[])

    apt.pinned_packages(
        name=f"Kernel headers for the running kernel ({host_state['kernel_release']})",
        packages={f"linux-headers-{host_state['kernel_release']}": None},
        lock_timeout=settings.gpu_apt_lock_timeout,
        hold=False,
    )
    blacklist = files.contents(
        name="Blacklist nouveau",
        files={NOUVEAU_BLACKLIST_PATH: NOUVEAU_BLACKLIST},
    )
    server.shell(
        name="Rebuild the initramfs without nouveau",
        commands=["if command -v update-initramfs >/dev/null; then update-initramfs -u; fi"],
        _if=blacklist.did_change,
    )
    replaced = replaced_driver_packages(host_state["packages"], settings.nvidia_driver_branch)
    if replaced:
        # Two branches' packages ship the same files: the old family goes first. Interrupted
        # here, the host has no driver and no hold, and the next run installs the new branch.
        server.shell(
            name=f"Remove the driver packages replaced by branch {settings.nvidia_driver_branch}",
            commands=[
                apt.transaction(
                    [
                        f"{apt.apt_get(settings.gpu_apt_lock_timeout)} purge "
                        "--allow-change-held-packages "
                        + " ".join(shlex.quote(name) for name in replaced),
                    ],
                    settings.gpu_apt_lock_timeout,
                )
            ],
        )
    apt.pinned_packages(
        name=f"NVIDIA driver {settings.nvidia_driver_version} (pinned, held)",
        packages=driver_packages(settings.nvidia_driver_branch, settings.nvidia_driver_version),
        lock_timeout=settings.gpu_apt_lock_timeout,
    )
    persistenced = files.contents(
        name="nvidia-persistenced in persistence mode",
        files={PERSISTENCED_DROPIN_PATH: PERSISTENCED_DROPIN},
    )
    boot_link = files.link(
        name="nvidia-persistenced started at boot",
        path=PERSISTENCED_BOOT_LINK,
        target=PERSISTENCED_UNIT,
    )
    daemon_reload(name="Reload systemd units", _if=any_changed(persistenced, boot_link))
    systemd.service(name="nvidia-persistenced running", unit=PERSISTENCED_SERVICE, running=True)
    systemd.runs_with(
        name="nvidia-persistenced runs in persistence mode",
        unit=PERSISTENCED_SERVICE,
        argument=PERSISTENCE_MODE,
    )
    activate_driver(settings=settings, host_state=host_state)
