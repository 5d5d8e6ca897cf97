"""Driver change planning: versions, GPU users, refusal or drain, reload or reboot."""

from __future__ import annotations

import json

import pytest
from pyinfra.api import deploy

from gpufleet.deploys.driver_upgrade import plan_driver_change, refusal
from gpufleet.deploys.nvidia_driver import (
    activate_driver,
    installed_driver_version,
    module_change_reason,
    reload_modules_command,
    replaced_driver_packages,
)
from gpufleet.facts.gpu_host import GpuHostState, GpuHostStateInfo
from gpufleet.facts.gpu_users import container_uses_gpus, parse_gpu_users
from gpufleet.facts.nvidia import nvidia_smi_error
from gpufleet.stack.catalog import DriverChoice, KernelModules
from gpufleet.stack.repositories import DriverNaming
from tests.fakehost import bare_ubuntu_2004, prepare
from tests.unit.driver_packages import R470_FULL_PROPRIETARY

JOB_ID = "a" * 64
WEB_ID = "b" * 64
DEVICE_REQUEST = '[{"Driver":"","Count":-1,"DeviceIDs":null,"Capabilities":[["gpu"]]}]'


def r470(version: str = "470.182.03") -> DriverChoice:
    """The full R470 driver at ``version`` (proprietary modules: R470 has no open ones)."""
    return DriverChoice(DriverNaming.UBUNTU, "470", version, KernelModules.PROPRIETARY, False)


def host_on(version: str, loaded: str | None = None) -> GpuHostStateInfo:
    """A host with the full R470 driver ``version`` installed and held, nvidia-smi answering
    for ``loaded``."""
    state = GpuHostState.default()
    state["packages"] = {
        name: {"version": f"{version}-1", "held": True, "installed": True}
        for name in R470_FULL_PROPRIETARY
    }
    state["nvidia_smi"] = {
        "driver_version": loaded or version,
        "cuda_version": "11.4",
        "gpus": [],
        "processes": [],
        "error": None,
    }
    return state


def with_gpu_job(state: GpuHostStateInfo) -> GpuHostStateInfo:
    assert state["nvidia_smi"] is not None
    state["nvidia_smi"]["processes"] = [
        {"gpu_uuid": "GPU-1", "pid": 4242, "process_name": "python3", "used_memory_mib": 300}
    ]
    state["gpu_users"] = parse_gpu_users(
        [
            f'container\t{JOB_ID}\t/job\ttf:2.9\trunc\t{DEVICE_REQUEST}\t["PATH=/bin"]',
            f'container\t{WEB_ID}\t/web\tnginx\trunc\tnull\t["PATH=/bin"]',
            f"process\t4242\t0::/system.slice/docker-{JOB_ID}.scope ",
        ]
    )
    return state


def test_host_on_the_pin_has_no_change() -> None:
    assert plan_driver_change(r470(), host_on("470.182.03")) is None


def test_version_change_on_idle_host_needs_a_reboot_without_visible_modules() -> None:
    change = plan_driver_change(r470("470.239.06"), host_on("470.182.03"))
    assert change is not None
    assert change.summary() == (
        "driver upgrade 470.182.03 -> 470.239.06; GPU users: none; reboot needed "
        "(kernel module 470.182.03 is loaded, 470.239.06 is pinned)"
    )
    assert refusal(change, drain=False) is None


def test_modules_listed_by_the_kernel_are_reloaded_instead() -> None:
    state = host_on("470.182.03")
    state["nvidia_kernel"]["nvidia_modules"] = {"nvidia": 2, "nvidia_uvm": 0}
    change = plan_driver_change(r470("470.239.06"), state)
    assert change is not None and not change.reboot_needed
    assert "module reload needed" in change.summary()
    command = reload_modules_command(["nvidia", "nvidia_uvm"])
    assert "modprobe -r nvidia_uvm nvidia; then modprobe -a nvidia nvidia_uvm" in command
    assert command.startswith("systemctl stop nvidia-persistenced.service; ")
    # The fabric manager holds the devices too, and must come back as the new driver's version.
    with_fabric_manager = reload_modules_command(["nvidia"], fabric_manager=True)
    assert with_fabric_manager.startswith(
        "systemctl stop nvidia-persistenced.service nvidia-fabricmanager.service; "
    )
    assert with_fabric_manager.endswith(
        "systemctl start nvidia-persistenced.service nvidia-fabricmanager.service; exit $status"
    )


def test_downgrade_is_a_change_like_an_upgrade() -> None:
    change = plan_driver_change(r470(), host_on("470.239.06"))
    assert change is not None
    assert (change.current_version, change.target_version) == ("470.239.06", "470.182.03")
    assert change.summary().startswith("driver downgrade 470.239.06 -> 470.182.03; ")
    # gpu_host's words for its own pin undoing a rollout's newer driver.
    assert change.summary("the inventory's pin").startswith(
        "driver downgrade 470.239.06 -> 470.182.03 (the inventory's pin); GPU users: "
    )


def test_busy_host_is_refused_with_its_users_unless_drained() -> None:
    state = with_gpu_job(host_on("470.182.03"))
    change = plan_driver_change(r470("470.239.06"), state)
    assert change is not None
    assert [c["name"] for c in change.gpu_containers] == ["job"]
    reason = refusal(change, drain=False)
    assert reason is not None
    assert "process 4242 python3 (container job)" in reason
    assert "container job (aaaaaaaaaaaa, tf:2.9)" in reason and "web" not in reason
    assert refusal(change, drain=True) is None


def test_drain_does_not_cover_processes_outside_containers() -> None:
    state = with_gpu_job(host_on("470.182.03"))
    state["gpu_users"]["process_containers"] = {4242: None}
    state["gpu_users"]["containers"] = []
    change = plan_driver_change(r470("470.239.06"), state)
    assert change is not None
    reason = refusal(change, drain=True)
    assert reason is not None and "4242 python3" in reason and "run in none" in reason


def test_stale_module_after_an_interrupted_change_still_needs_the_reboot() -> None:
    state = host_on("470.239.06")
    state["nvidia_smi"] = nvidia_smi_error(
        "Failed to initialize NVML: Driver/library version mismatch"
    )
    reason = module_change_reason(
        state["nvidia_kernel"], state["nvidia_smi"], r470("470.239.06"), "5.4.0-216-generic"
    )
    assert reason is not None and "version mismatch" in reason
    assert plan_driver_change(r470("470.239.06"), state) is not None


@pytest.mark.parametrize(
    ("runtime", "visible", "uses"),
    [("nvidia", "all", True), ("nvidia", "void", False), ("", "0,1", True), ("runc", "all", False)],
)
def test_nvidia_runtime_containers_use_gpus_when_devices_are_visible(
    runtime: str, visible: str, uses: bool
) -> None:
    environment = json.dumps([f"NVIDIA_VISIBLE_DEVICES={visible}"])
    (container,) = parse_gpu_users(
        [f"container\t{JOB_ID}\t/j\timg\t{runtime}\tnull\t{environment}"]
    )["containers"]
    assert container_uses_gpus(container, default_runtime="nvidia") is uses


def test_branch_change_replaces_the_other_branchs_family() -> None:
    state = host_on("470.182.03")
    r535 = DriverChoice(DriverNaming.UBUNTU, "535", "535.183.01", KernelModules.PROPRIETARY, False)
    # The branch-less companions (nvidia-modprobe, nvidia-settings, libxnvctrl0) stay: R535's
    # full driver pins them too.
    assert replaced_driver_packages(state["packages"], r535) == [
        name
        for name in R470_FULL_PROPRIETARY
        if name not in ("libxnvctrl0", "nvidia-modprobe", "nvidia-settings")
    ]
    assert replaced_driver_packages(state["packages"], r470()) == []


def test_packages_neither_installed_nor_held_are_not_replaced() -> None:
    state = host_on("470.182.03")
    # dpkg-query lists a removed package's leftover configuration ("deinstall ok config-files").
    state["packages"]["nvidia-driver-460"] = {
        "version": "460.91.03-1",
        "held": False,
        "installed": False,
    }
    state["packages"]["nvidia-utils-460"] = {
        "version": "460.91.03-1",
        "held": True,
        "installed": False,
    }
    assert replaced_driver_packages(state["packages"], r470()) == ["nvidia-utils-460"]


def test_installed_driver_version_is_read_from_the_compute_library() -> None:
    state = GpuHostState.default()
    state["packages"] = {
        # Debian naming (NVIDIA's debian12 repository): libcuda1 carries the driver version.
        "libcuda1": {"version": "560.35.03-1", "held": True, "installed": True},
        "nvidia-driver-cuda": {"version": "560.35.03-1", "held": True, "installed": True},
        "nvidia-modprobe": {"version": "580.159.04-1", "held": False, "installed": True},
    }
    assert installed_driver_version(state["packages"]) == "560.35.03"
    headless = host_on("470.182.03")
    del headless["packages"]["nvidia-driver-470"]
    assert installed_driver_version(headless["packages"]) == "470.182.03"
    assert installed_driver_version({}) is None


@pytest.mark.parametrize(
    ("reboot_allowed", "operation"),
    [
        (False, "Reboot required"),
        (
            True,
            "Reboot: the nouveau module is loaded; the NVIDIA driver can only load after a reboot",
        ),
    ],
    ids=["not-allowed-stops", "allowed-reboots"],
)
def test_nouveau_host_reboots_only_when_allowed(reboot_allowed: bool, operation: str) -> None:
    host_state = host_on("470.182.03")
    host_state["nvidia_kernel"]["nouveau_loaded"] = True

    @deploy("Activate")
    def activate() -> None:
        activate_driver(driver=r470(), reboot_allowed=reboot_allowed, host_state=host_state)

    # Planned only: a run would reboot (or stop) the @fake host.
    state = prepare({"gpu-01": (bare_ubuntu_2004(), {})}, activate)
    planned = [
        " | ".join(sorted(state.get_op_meta(op_hash).names)).split(" | ")[-1]
        for op_hash in state.get_op_order()
    ]
    assert planned == [operation]
