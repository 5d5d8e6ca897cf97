"""
The NVIDIA driver from NVIDIA's CUDA repository, pinned to an exact version and held.

`cuda-drivers-<branch>` depends on `nvidia-driver-<branch> (>= X)` and friends, so pinning the
metapackage alone would still pull the newest driver of the branch: every package of the family
is pinned to the same version.
"""

from __future__ import annotations

import logging

from pyinfra import host
from pyinfra.api import FunctionCommand, deploy, operation
from pyinfra.operations import files as pyinfra_files
from pyinfra.operations import server, systemd
from pyinfra.operations.util import any_changed

from deploys import apt, files
from deploys.settings import DATA_DEFAULTS, GpuSettings, read_settings
from facts.gpu_host import GpuHostState, GpuHostStateInfo
from facts.nvidia import NvidiaKernelInfo

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
PERSISTENCED_BOOT_LINK = "/etc/systemd/system/multi-user.target.wants/nvidia-persistenced.service"
PERSISTENCED_UNIT = "/lib/systemd/system/nvidia-persistenced.service"

logger = logging.getLogger("pyinfra")


def driver_packages(branch: str, version: str) -> dict[str, str | None]:
    """Every package of the branch's family, pinned to one upstream version (any revision)."""
    return {name.format(branch=branch): f"{version}-*" for name in DRIVER_PACKAGE_FAMILY}


def reboot_reason(kernel: NvidiaKernelInfo, driver_version: str) -> str | None:
    """Why the pinned driver cannot take effect without a reboot, or None when it can."""
    if kernel["nouveau_loaded"]:
        return "the nouveau module is loaded; the NVIDIA driver can only load after a reboot"
    loaded = kernel["loaded_driver_version"]
    if loaded and loaded != driver_version:
        return f"kernel module {loaded} is loaded, {driver_version} is installed"
    return None


@operation()
def reboot_required(reason: str):
    """
    Say loudly, at the end of the run, that the host needs a reboot gpufleet may not do.

    + reason: why the reboot is needed
    """
    message = (
        f"REBOOT REQUIRED ({reason}); gpu_reboot_allowed is false, so gpufleet did not reboot. "
        "Reboot the host when its jobs allow, or re-run with gpu_reboot_allowed: true."
    )

    def warn(state, host) -> bool:
        host.log_styled(message, fg="yellow", bold=True, log_func=logger.warning)
        return True

    yield FunctionCommand(warn, (), {})


@deploy("NVIDIA driver", data_defaults=DATA_DEFAULTS)
def nvidia_driver(
    settings: GpuSettings | None = None, host_state: GpuHostStateInfo | None = None
) -> None:
    settings = settings or read_settings(host.data)
    host_state = host_state or host.get_fact(GpuHostState, packages=[])

    apt.pinned_packages(
        name=f"Kernel headers for the running kernel ({host_state['kernel_release']})",
        packages={f"linux-headers-{host_state['kernel_release']}": None},
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
    apt.pinned_packages(
        name=f"NVIDIA driver {settings.nvidia_driver_version} (pinned, held)",
        packages=driver_packages(settings.nvidia_driver_branch, settings.nvidia_driver_version),
    )
    persistenced = files.contents(
        name="nvidia-persistenced in persistence mode",
        files={PERSISTENCED_DROPIN_PATH: PERSISTENCED_DROPIN},
    )
    boot_link = pyinfra_files.link(
        name="nvidia-persistenced started at boot",
        path=PERSISTENCED_BOOT_LINK,
        target=PERSISTENCED_UNIT,
    )
    systemd.daemon_reload(name="Reload systemd units", _if=any_changed(persistenced, boot_link))
    systemd.service(name="nvidia-persistenced running", service="nvidia-persistenced", running=True)
    systemd.service(
        name="Restart nvidia-persistenced for its new settings",
        service="nvidia-persistenced",
        restarted=True,
        _if=persistenced.did_change,
    )
    reason = reboot_reason(host_state["nvidia_kernel"], settings.nvidia_driver_version)
    if reason is None:
        return
    # The loaded kernel modules only change at a reboot, so this need does not depend on
    # whether this run changed anything: an earlier run may have installed without rebooting.
    if settings.gpu_reboot_allowed:
        server.reboot(name=f"Reboot: {reason}", delay=10, reboot_timeout=600)
    else:
        reboot_required(name="Reboot required", reason=reason)
