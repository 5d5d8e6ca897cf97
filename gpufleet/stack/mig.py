"""MIG (Multi-Instance GPU) layouts: which GPU instance profiles a GPU offers, whether a layout
fits, how it is created, and how the host keeps it across reboots.

Pure knowledge (no pyinfra, no I/O). The profile tables are the real `nvidia-smi mig -lgip` and
`-lgipp` outputs cited in gpufleet/stack/SOURCES.md, section "MIG layouts and DCGM" (the fixtures
tests/fixtures/facts/nvidia-smi-mig-lgip*.txt, which tests/unit/test_mig.py parses against
these literals).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

from gpufleet.stack.gpus import Architecture, gpu_model

# What the host keeps of the layouts, read by the boot unit's script: one line per GPU index,
# "<index> <profile>,<profile>,..." in creation order, or "<index> disabled".
LAYOUTS_PATH = "/etc/gpufleet/mig-layouts"
SCRIPT_PATH = "/usr/local/sbin/gpufleet-mig-layouts"
SERVICE = "gpufleet-mig-layouts.service"
UNIT_PATH = f"/etc/systemd/system/{SERVICE}"
BOOT_LINK = f"/etc/systemd/system/multi-user.target.wants/{SERVICE}"
DISABLED = "disabled"
# As NVIDIA's nvidia-mig-manager.service has been ordered since 2024 (SOURCES.md, "MIG layouts
# and DCGM" 5): after the driver's daemons, which hold the GPUs' state; before everything that
# hands GPUs to jobs, so no container or job starts on a GPU without its instances.
UNIT = f"""\
[Unit]
Description=gpufleet: MIG layouts of {LAYOUTS_PATH}
After=nvidia-persistenced.service nvidia-fabricmanager.service
Before=docker.service containerd.service nvidia-dcgm.service slurmd.service kubelet.service
ConditionPathExists={LAYOUTS_PATH}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={SCRIPT_PATH}

[Install]
WantedBy=multi-user.target
"""

# A GPU instance profile's name as nvidia-smi prints it without its "MIG " prefix: slices of
# compute, memory, and "+me" (media extensions) or similar attributes, e.g. 3g.40gb, 1g.10gb+me.
PROFILE_NAME = re.compile(r"[1-9]g\.[1-9][0-9]*gb(\+[a-z]+)*")


class GpuInstance(TypedDict):
    """A GPU instance, as the host read reports it (gpufleet/facts/mig.py)."""

    gpu: int
    profile: str  # "3g.40gb"
    profile_id: int
    instance_id: int
    placement: str  # "4:4", start:size


class MigGpu(TypedDict):
    """What the layouts need of a GPU nvidia-smi lists (gpufleet/facts/nvidia.py's GpuInfo)."""

    index: int
    mig_mode: str | None  # current: "Enabled", "Disabled"; None where the GPU has no MIG


class MigInstancesInfo(TypedDict):
    gpu_instances: list[GpuInstance]
    # (GPU index, GPU instance id) of every compute instance.
    compute_instances: list[tuple[int, int]]


@dataclass(frozen=True)
class MigProfile:
    name: str  # "3g.40gb"
    profile_id: int  # the ID column of -lgip, what -cgi also accepts
    instances: int  # the Total of -lgip's Free/Total
    placements: tuple[int, ...]  # -lgipp's start slices
    size: int  # -lgipp's ":size", in memory slices

    def slices(self, start: int) -> range:
        return range(start, start + self.size)


def _profile(name: str, profile_id: int, instances: int, placements: str, size: int) -> MigProfile:
    return MigProfile(name, profile_id, instances, tuple(map(int, placements.split(","))), size)


# The placements are the same on both (-lgipp of the MIG user guide's A100 40GB and of an
# H100 80GB HBM3); the names, ids and instance counts are each GPU's -lgip.
_A100_40GB = (
    _profile("1g.5gb", 19, 7, "0,1,2,3,4,5,6", 1),
    _profile("1g.5gb+me", 20, 1, "0,1,2,3,4,5,6", 1),
    _profile("1g.10gb", 15, 4, "0,2,4,6", 2),
    _profile("2g.10gb", 14, 3, "0,2,4", 2),
    _profile("3g.20gb", 9, 2, "0,4", 4),
    _profile("4g.20gb", 5, 1, "0", 4),
    _profile("7g.40gb", 0, 1, "0", 8),
)
_H100_80GB = (
    _profile("1g.10gb", 19, 7, "0,1,2,3,4,5,6", 1),
    _profile("1g.10gb+me", 20, 1, "0,1,2,3,4,5,6", 1),
    _profile("1g.20gb", 15, 4, "0,2,4,6", 2),
    _profile("2g.20gb", 14, 3, "0,2,4", 2),
    _profile("3g.40gb", 9, 2, "0,4", 4),
    _profile("4g.40gb", 5, 1, "0", 4),
    _profile("7g.80gb", 0, 1, "0", 8),
)
# PCI device id (gpufleet.stack.gpus.GPU_MODELS) -> the profiles it offers. Only GPUs whose
# tables were found real; other MIG-capable GPUs are refused, naming these.
MIG_PROFILES: dict[str, tuple[MigProfile, ...]] = {
    "20b0": _A100_40GB,  # A100-SXM4-40GB
    "20b1": _A100_40GB,  # A100-PCIE-40GB
    "20f1": _A100_40GB,  # A100-PCIE-40GB
    "2330": _H100_80GB,  # H100 80GB HBM3
}
# GPUs with MIG in their architecture (A100/A30, Hopper, Blackwell data center parts); used to
# tell "no MIG at all" from "MIG, but no table here".
MIG_ARCHITECTURES = (Architecture.AMPERE, Architecture.HOPPER, Architecture.BLACKWELL)


def profiles_text(profiles: Sequence[MigProfile]) -> str:
    """`1g.10gb (7 of them), ...`: what a refusal lists as the GPU's offer."""
    return ", ".join(f"{profile.name} (up to {profile.instances})" for profile in profiles)


def creation_order(layout: Sequence[str]) -> list[str]:
    """The layout, largest instances first (compute slices, then memory): the order `-cgi`
    gets them in, so the small ones fill what the large ones leave."""

    def size(name: str) -> tuple[int, int]:
        compute, memory = re.findall(r"\d+", name)[:2]
        return int(compute), int(memory)

    return sorted(layout, key=lambda name: (*(-part for part in size(name)), name))


def fits(layout: Sequence[str], profiles: Sequence[MigProfile]) -> bool:
    """
    Whether ``creation_order(layout)`` can be created, each instance at a free placement of its
    profile. The driver picks each placement itself; putting each at its highest free one gives
    the same verdict as NVIDIA's own choice (the tightest hole, which the real outputs show)
    for every layout of up to seven instances in creation order.
    """
    by_name = {profile.name: profile for profile in profiles}
    used: set[int] = set()
    for name in creation_order(layout):
        profile = by_name[name]
        free = [start for start in profile.placements if used.isdisjoint(profile.slices(start))]
        if not free:
            return False
        used.update(profile.slices(max(free)))
    return True


def layout_problem(
    key: str, gpu_index: int, gpu_name: str, device_id: str, layout: Sequence[str]
) -> str | None:
    """Why GPU ``gpu_index`` (``gpu_name``, PCI ``device_id``) cannot hold ``layout``, or None."""
    where = f"{key}[{gpu_index}] = {list(layout)!r}"
    profiles = MIG_PROFILES.get(device_id.lower())
    if profiles is None:
        model = gpu_model(device_id)
        if model is None or model.architecture not in MIG_ARCHITECTURES:
            return f"{where}: GPU {gpu_index} ({gpu_name}) does not support MIG; leave it out"
        known = sorted({profile_gpu(device) for device in MIG_PROFILES})
        return (
            f"{where}: gpufleet has no MIG profile table for GPU {gpu_index} ({gpu_name}); "
            f"it knows {', '.join(known)}"
        )
    offered = {profile.name: profile for profile in profiles}
    unknown = [name for name in layout if name not in offered]
    if unknown:
        return (
            f"{where}: GPU {gpu_index} ({gpu_name}) has no profile "
            f"{', '.join(map(repr, unknown))}; it offers {profiles_text(profiles)}"
        )
    counts = Counter(layout)
    too_many = [name for name, count in counts.items() if count > offered[name].instances]
    if too_many or not fits(layout, profiles):
        return (
            f"{where}: GPU {gpu_index} ({gpu_name}) cannot hold these instances together "
            f"(Insufficient Resources); it offers {profiles_text(profiles)}, on 7 compute and "
            "8 memory slices"
        )
    return None


def profile_gpu(device_id: str) -> str:
    model = gpu_model(device_id)
    return model.name if model else device_id


def layouts_file(layouts: Mapping[int, Sequence[str]]) -> str:
    """LAYOUTS_PATH's content for ``layouts`` (GPU index -> profiles in creation order)."""
    lines = [
        f"{index} {','.join(profiles) if profiles else DISABLED}"
        for index, profiles in sorted(layouts.items())
    ]
    return "".join(f"{line}\n" for line in lines)


def gpu_layouts(info: MigInstancesInfo) -> dict[int, list[str]]:
    """GPU index -> the profiles of its GPU instances that have a compute instance, sorted:
    an instance without one cannot run CUDA, so it is no part of a working layout."""
    usable = set(info["compute_instances"])
    layouts: dict[int, list[str]] = {}
    for instance in info["gpu_instances"]:
        if (instance["gpu"], instance["instance_id"]) in usable:
            layouts.setdefault(instance["gpu"], []).append(instance["profile"])
    return {gpu: sorted(profiles) for gpu, profiles in layouts.items()}


def unmet_layouts(
    wanted: Mapping[int, Sequence[str]],
    modes: Mapping[int, str | None],
    current: Mapping[int, Sequence[str]],
) -> dict[int, str]:
    """
    GPU index -> what differs from its wanted layout (an empty one: MIG disabled), given each
    GPU's current MIG mode and the profiles of its usable instances.
    """
    unmet: dict[int, str] = {}
    for index, profiles in sorted(wanted.items()):
        mode = modes.get(index)
        have = sorted(current.get(index, []))
        if not profiles:
            if mode == "Enabled":
                unmet[index] = "MIG mode is enabled, wanted disabled"
        elif mode != "Enabled":
            unmet[index] = f"MIG mode is {mode or 'unknown'}, wanted enabled"
        elif have != sorted(profiles):
            unmet[index] = f"instances {', '.join(have) or 'none'}, wanted {', '.join(profiles)}"
    return unmet


def unmet_on_gpus(
    layouts: Mapping[int, Sequence[str]], gpus: Iterable[MigGpu], instances: MigInstancesInfo
) -> dict[int, str]:
    """unmet_layouts from what the host read gives: nvidia-smi's GPUs and the MIG instances."""
    modes = {gpu["index"]: gpu["mig_mode"] for gpu in gpus}
    return unmet_layouts(layouts, modes, gpu_layouts(instances))
