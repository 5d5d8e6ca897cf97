"""
The NVIDIA driver from NVIDIA's CUDA repository, pinned to an exact version and held.

`cuda-drivers-<branch>` depends on `nvidia-driver-<branch> (>= X)` and friends, so pinning the
metapackage alone would still pull the newest driver of the branch: every package of the family
is pinned to the same version.
"""

from __future__ import annotations

import logging
import shlex
import time

from pyinfra.api import FunctionCommand, StringCommand, deploy, operation
from pyinfra.api.exceptions import OperationError
from pyinfra.operations import server
from pyinfra.operations.systemd import daemon_reload

from gpufleet import run_summary
from gpufleet.facts.apt import DebPackageState
from gpufleet.facts.gpu_host import GpuHostStateInfo
from gpufleet.facts.nvidia import NvidiaKernelInfo, NvidiaSmiInfo
from gpufleet.facts.pyinfra_internals import changes_host
from gpufleet.operations import managed_files as files
from gpufleet.operations import packages as apt
from gpufleet.operations import units as systemd
from gpufleet.stack import catalog
from gpufleet.stack.versions import upstream_version

# nvidia-smi's words when the loaded kernel module is not the installed libraries' version.
VERSION_MISMATCH = "Driver/library version mismatch"
# Dependent modules first: the order `modprobe -r` needs.
MODULE_UNLOAD_ORDER = ("nvidia_drm", "nvidia_modeset", "nvidia_uvm", "nvidia")

NOUVEAU_BLACKLIST_PATH = "/etc/modprobe.d/blacklist-nouveau.conf"
NOUVEAU_BLACKLIST = (
    "# Managed by gpufleet: the NVIDIA driver cannot load beside nouveau.\n"
    "blacklist nouveau\noptions nouveau modeset=0\n"
)

# unattended-upgrades upgrading the driver's libraries under the loaded kernel module breaks
# NVML until a reboot ("Failed to initialize NVML: Driver/library version mismatch"). Holds
# keep it away too; the blacklist also covers a hold lifted by hand. Its entries are Python
# regular expressions matched from the start of the name (since 0.70); apt appends the lists
# of every configuration file.
UNATTENDED_UPGRADES_PATH = "/etc/apt/apt.conf.d/51gpufleet-unattended-upgrades"
UNATTENDED_UPGRADES_BLACKLIST = (
    "// Managed by gpufleet: the NVIDIA driver and the CUDA stack change only when gpufleet\n"
    "// pins them (a library upgrade under the loaded kernel module breaks NVML).\n"
    "Unattended-Upgrade::Package-Blacklist {\n"
    + "".join(
        f'    "{pattern}";\n'
        for pattern in (
            "nvidia-",
            "libnvidia-",
            "cuda-",
            "libcuda1",
            "libcudnn",
            "libxnvctrl0",
            "firmware-nvidia-",
            "xserver-xorg-video-nvidia",
        )
    )
    + "};\n"
)

# Ubuntu's unit runs the daemon with --no-persistence-mode, stops when unneeded and has no
# [Install] section (udev starts it): gpufleet wants persistence mode on and the daemon up at boot.
PERSISTENCED_DROPIN_PATH = "/etc/systemd/system/nvidia-persistenced.service.d/gpufleet.conf"
# The argument the running daemon is checked for (its restart handler compares, see units.py).
PERSISTENCE_MODE = "--persistence-mode"
PERSISTENCED_DROPIN = (
    "# Managed by gpufleet: keep the GPUs initialised between jobs.\n"
    "[Unit]\nStopWhenUnneeded=false\n\n"
    "[Service]\nExecStart=\n"
    "ExecStart=/usr/bin/nvidia-persistenced"
    f" --user nvidia-persistenced {PERSISTENCE_MODE} --verbose\n"
)
PERSISTENCED_SERVICE = "nvidia-persistenced.service"
PERSISTENCED_BOOT_LINK = f"/etc/systemd/system/multi-user.target.wants/{PERSISTENCED_SERVICE}"
PERSISTENCED_UNIT = f"/lib/systemd/system/{PERSISTENCED_SERVICE}"

# DKMS (3.x) reads framework.conf.d after framework.conf; mok_signing_key and mok_certificate
# are the key pair it signs every module it builds with (dkms's README, "Module signing").
DKMS_SIGNING_PATH = "/etc/dkms/framework.conf.d/gpufleet-module-signing.conf"


def dkms_signing_config(key_path: str, cert_path: str) -> str:
    """The DKMS configuration (sourced by bash: the paths are checked plain, see settings)."""
    return (
        "# Managed by gpufleet: Secure Boot loads only modules signed with an enrolled key.\n"
        f'mok_signing_key="{key_path}"\nmok_certificate="{cert_path}"\n'
    )


logger = logging.getLogger("pyinfra")


def installed_driver_version(packages: dict[str, DebPackageState]) -> str | None:
    """The upstream version of the installed driver's libraries, None without a driver."""
    for name, state in sorted(packages.items()):
        if catalog.DRIVER_LIBRARY.fullmatch(name) and state["installed"]:
            return upstream_version(state["version"])
    return None


def replaced_driver_packages(
    packages: dict[str, DebPackageState], driver: catalog.DriverChoice
) -> list[str]:
    """Installed or held driver packages the pinned driver does not keep (catalog says which)."""
    present = [name for name, state in packages.items() if state["installed"] or state["held"]]
    return catalog.replaced_driver_packages(present, driver)


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
    kernel: NvidiaKernelInfo,
    smi: NvidiaSmiInfo | None,
    driver: catalog.DriverChoice,
    kernel_release: str | None,
) -> str | None:
    """Why the running kernel does not have the pinned driver's module, None when it does."""
    driver_version = driver.version
    if catalog.signed_module_packages(driver) and not catalog.runs_flavour(
        kernel_release or "", driver.kernel_flavour
    ):
        # Canonical's modules exist for the flavour's kernels only: a golden image built in a
        # container, or a host on another kernel, loads them once it boots one.
        return (
            f"Canonical's signed modules are for the {driver.kernel_flavour} kernels and the "
            f"running kernel {kernel_release} is not one: boot a {driver.kernel_flavour} kernel"
        )
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


def reload_modules_command(loaded_modules: list[str], fabric_manager: bool = False) -> str:
    """
    Unload the NVIDIA modules and load the installed ones, with the daemons that hold the
    devices open (nvidia-persistenced; the fabric manager, which must then run the new
    driver's version) stopped meanwhile. The kernel refuses to unload a module still in use.
    """
    unload = [name for name in MODULE_UNLOAD_ORDER if name in loaded_modules]
    daemons = " ".join(
        [PERSISTENCED_SERVICE, *([catalog.FABRIC_MANAGER_SERVICE] if fabric_manager else [])]
    )
    return (
        f"systemctl stop {daemons}; "
        f"if modprobe -r {' '.join(unload)}; then modprobe -a {' '.join(reversed(unload))}; "
        "status=$?; else status=1; echo "
        + shlex.quote("the NVIDIA kernel modules are still in use: reboot required")
        + f" >&2; fi; systemctl start {daemons}; exit $status"
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
                # sshd answers before the boot has finished: wait for the units the next
                # operations check (nvidia-persistenced, docker) to have started; under load
                # that is seconds later. "degraded" counts as finished (exit status 1).
                remaining = max(1, int(deadline - time.monotonic()))
                host.run_shell_command(
                    StringCommand("systemctl", "is-system-running", "--wait"), _timeout=remaining
                )
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
        run_summary.record_reboot_required(state, host, reason)
        return False

    yield FunctionCommand(stop, (), {})


@deploy("Load the pinned NVIDIA kernel module")
def activate_driver(
    driver: catalog.DriverChoice, reboot_allowed: bool, host_state: GpuHostStateInfo
) -> None:
    """Reload the NVIDIA modules when nothing holds them, or reboot, or stop the host."""
    kernel = host_state["nvidia_kernel"]
    # The loaded module only changes at a reload or a reboot, so this need does not depend on
    # whether this run changed anything: an earlier run may have installed and stopped.
    reason = module_change_reason(
        kernel, host_state["nvidia_smi"], driver, host_state["kernel_release"]
    )
    if reason is None:
        return
    if can_reload_modules(kernel):
        server.shell(
            name=f"Reload the NVIDIA kernel modules: {reason}",
            commands=[
                reload_modules_command(list(kernel["nvidia_modules"]), driver.fabric_manager)
            ],
        )
    elif reboot_allowed:
        reboot(name=f"Reboot: {reason}")
    else:
        reboot_required(name="Reboot required", reason=reason)


@deploy("NVIDIA driver")
def nvidia_driver(
    driver: catalog.DriverChoice,
    host_state: GpuHostStateInfo,
    reboot_allowed: bool,
    lock_timeout: int,
    module_signing: tuple[str, str] | None = None,
) -> None:
    """
    + driver: the driver's packages, branch, exact upstream version and module flavour
    + host_state: the host read with every branch's driver packages
      (catalog.DRIVER_PACKAGE_PATTERNS): those the driver does not keep are removed first
    + reboot_allowed: reboot when the new kernel module cannot be loaded otherwise
    + lock_timeout: seconds to wait for another process's dpkg lock
    + module_signing: the Machine Owner Key's private key and certificate paths on the host,
      for DKMS to sign the modules with (Secure Boot hosts)
    """
    signed_modules = catalog.signed_module_packages(driver)
    if not signed_modules:
        # DKMS builds the modules against them. None only when `uname -r` fails, which a host
        # that got this far does not.
        kernel_release = str(host_state["kernel_release"])
        apt.pinned_packages(
            name=f"Kernel headers for the running kernel ({kernel_release})",
            packages={catalog.kernel_headers_package(kernel_release): None},
            lock_timeout=lock_timeout,
            hold=False,
        )
    files.contents(
        name="unattended-upgrades leaves the NVIDIA stack alone",
        files={UNATTENDED_UPGRADES_PATH: UNATTENDED_UPGRADES_BLACKLIST},
    )
    blacklist = files.contents(
        name="Blacklist nouveau",
        files={NOUVEAU_BLACKLIST_PATH: NOUVEAU_BLACKLIST},
    )
    # Decided while planning, so a dry run of a converged host shows no conditional change.
    if changes_host(blacklist):
        server.shell(
            name="Rebuild the initramfs without nouveau",
            commands=["if command -v update-initramfs >/dev/null; then update-initramfs -u; fi"],
        )
    replaced = replaced_driver_packages(host_state["packages"], driver)
    if replaced:
        # Interrupted here, the host has no driver and no hold, and the next run installs the
        # pinned one.
        server.shell(
            name=f"Remove the driver packages R{driver.branch} "
            f"({driver.kernel_modules.value} modules) replaces",
            commands=[
                apt.transaction(
                    [
                        f"{apt.apt_get(lock_timeout)} purge --allow-change-held-packages "
                        + " ".join(shlex.quote(name) for name in replaced),
                    ],
                    lock_timeout,
                )
            ],
        )
    if module_signing is not None:
        files.contents(
            name="DKMS signs the NVIDIA modules with the enrolled Machine Owner Key",
            files={DKMS_SIGNING_PATH: dkms_signing_config(*module_signing)},
        )
    apt.pinned_packages(
        name=f"NVIDIA driver {driver.version} (pinned, held)",
        packages=catalog.driver_packages(driver),
        lock_timeout=lock_timeout,
    )
    if signed_modules:
        apt.pinned_packages(
            name=f"Canonical's signed NVIDIA modules for the {driver.kernel_flavour} kernels",
            packages=signed_modules,
            lock_timeout=lock_timeout,
            hold=False,
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
    if changes_host(persistenced) or changes_host(boot_link):
        daemon_reload(name="Reload systemd units")
    # The daemons open the devices, so they start once the pinned module is the kernel's.
    activate_driver(driver=driver, reboot_allowed=reboot_allowed, host_state=host_state)
    systemd.service(name="nvidia-persistenced running", unit=PERSISTENCED_SERVICE, running=True)
    systemd.runs_with(
        name="nvidia-persistenced runs in persistence mode",
        unit=PERSISTENCED_SERVICE,
        argument=PERSISTENCE_MODE,
    )
    if driver.fabric_manager:
        # The fabric manager refuses to start beside another driver version.
        systemd.service(
            name="nvidia-fabricmanager running, started at boot",
            unit=catalog.FABRIC_MANAGER_SERVICE,
            running=True,
            enabled=True,
        )
