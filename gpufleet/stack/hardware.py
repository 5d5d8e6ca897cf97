"""
What the GPUs on a host's PCI bus allow: the driver branches that drive them, the kernel module
flavour, whether NVSwitches need the fabric manager, and how well a framework's build covers
them. Pure functions of the PCI devices the host read found (gpufleet/facts/pci.py) and the
tables of gpufleet/stack/gpus.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypedDict

from gpufleet.stack.catalog import FIRST_OPEN_MODULES_BRANCH, KernelModules
from gpufleet.stack.gpus import (
    ARCHITECTURES,
    GPU_CLASSES,
    NVSWITCH_CLASS,
    NVSWITCH_MODELS,
    TENSORFLOW_BUILDS,
    Coverage,
    GpuModel,
    OpenModules,
    coverage,
    driven_by,
    gpu_model,
    open_modules,
)

# From this branch NVIDIA makes the open kernel modules the default (Turing and newer GPUs).
OPEN_MODULES_DEFAULT_BRANCH = 560


class PciDevice(TypedDict):
    """An NVIDIA device on the PCI bus, as the host read reports it (gpufleet/facts/pci.py)."""

    address: str  # domain:bus:device.function, "0000:07:00.0"
    class_code: str  # PCI class and subclass, "0302" (3D controller)
    device_id: str  # "20b2"


@dataclass(frozen=True)
class HostGpu:
    address: str  # "0000:07:00.0"
    device_id: str  # "20b2"
    model: GpuModel | None  # None: an NVIDIA GPU gpufleet's table does not know

    def describe(self) -> str:
        if self.model is None:
            return f"NVIDIA GPU 10de:{self.device_id} (not in gpufleet's table)"
        model = self.model
        return f"{model.name} ({model.architecture.value}, compute {model.compute_capability})"


@dataclass(frozen=True)
class PciBus:
    """The NVIDIA devices a host has: its GPUs, and its NVSwitches' addresses."""

    gpus: tuple[HostGpu, ...] = ()
    nvswitches: tuple[str, ...] = ()

    @classmethod
    def from_devices(cls, devices: Iterable[PciDevice]) -> PciBus:
        """From the PCI fact's devices ({address, class_code, device_id})."""
        gpus, nvswitches = [], []
        for device in devices:
            if device["class_code"] in GPU_CLASSES:
                gpus.append(
                    HostGpu(device["address"], device["device_id"], gpu_model(device["device_id"]))
                )
            elif device["class_code"] == NVSWITCH_CLASS or device["device_id"] in NVSWITCH_MODELS:
                nvswitches.append(device["address"])
        return cls(tuple(gpus), tuple(nvswitches))

    @property
    def known(self) -> list[tuple[HostGpu, GpuModel]]:
        return [(gpu, gpu.model) for gpu in self.gpus if gpu.model is not None]

    @property
    def needs_fabric_manager(self) -> bool:
        return bool(self.nvswitches)

    def summary(self) -> str:
        if not self.gpus:
            return (
                "no NVIDIA GPU seen on the PCI bus: the pinned stack is installed without GPU "
                "checks"
            )
        parts = [
            f"{len(addresses)}x {description} at {', '.join(addresses)}"
            for description, addresses in group_gpus(self.gpus).items()
        ]
        if self.nvswitches:
            count = len(self.nvswitches)
            parts.append(f"{count} NVSwitch{'es' if count > 1 else ''}: fabric manager needed")
        return "GPUs: " + "; ".join(parts)


def group_gpus(gpus: Iterable[HostGpu]) -> dict[str, list[str]]:
    """The GPUs' addresses by description, so eight identical GPUs make one line."""
    groups: dict[str, list[str]] = {}
    for gpu in gpus:
        groups.setdefault(gpu.describe(), []).append(gpu.address)
    return groups


def branch_range(model: GpuModel) -> str:
    support = ARCHITECTURES[model.architecture]
    newest = f"R{support.newest_branch}" if support.newest_branch else "current branches"
    return f"R{support.oldest_branch} to {newest}"


def branch_problems(bus: PciBus, branch: int, setting: str, candidates: Sequence[str]) -> list[str]:
    """
    The GPUs ``branch`` cannot drive, each model once with its addresses; ``setting`` is how
    the branch was chosen ("nvidia_driver_branch = '470'") and ``candidates`` the branches
    gpufleet could install instead.
    """
    blocked = [gpu for gpu, model in bus.known if not driven_by(model, branch)]
    if not blocked:
        return []
    working = [
        candidate
        for candidate in candidates
        if all(driven_by(model, int(candidate)) for _, model in bus.known)
    ]
    fix = (
        f"set nvidia_driver_branch to one that drives every GPU here: {', '.join(working)}"
        if working
        else "no branch gpufleet installs here drives every GPU on this host"
    )
    return [
        f"{setting}: R{branch} cannot drive the {description} at {', '.join(addresses)} "
        f"(driven by {branch_range(model)}); {fix}"
        for (description, addresses), model in _with_models(blocked)
    ]


def _with_models(gpus: list[HostGpu]) -> list[tuple[tuple[str, list[str]], GpuModel]]:
    models = {gpu.describe(): gpu.model for gpu in gpus if gpu.model is not None}
    return [(group, models[group[0]]) for group in group_gpus(gpus).items()]


def module_flavour(
    bus: PciBus, branch: int, pinned: KernelModules | None
) -> tuple[KernelModules, str, list[str]]:
    """
    The kernel module flavour for the host's GPUs, why, and the problems of a pinned one: the
    open modules where a GPU needs them (Blackwell, Grace Hopper), the proprietary ones where a
    GPU predates Turing, else the open ones for data center GPUs from R515 (NVIDIA calls them
    production-ready there) and for every GPU from R560 (NVIDIA's default).
    """
    needs_open = [gpu for gpu, model in bus.known if open_modules(model) is OpenModules.REQUIRED]
    needs_proprietary = [
        gpu for gpu, model in bus.known if open_modules(model) is OpenModules.UNSUPPORTED
    ]
    problems = []
    if needs_open and needs_proprietary:
        problems.append(
            f"no kernel module flavour drives both the {_names(needs_open)} (open modules only) "
            f"and the {_names(needs_proprietary)} (proprietary modules only) on one host"
        )
    if pinned is not None:
        if pinned is KernelModules.PROPRIETARY and needs_open:
            problems.append(
                f"nvidia_kernel_modules = 'proprietary': the {_names(needs_open)} needs the "
                "open kernel modules; set nvidia_kernel_modules to 'open' or leave it unset"
            )
        if pinned is KernelModules.OPEN and needs_proprietary:
            problems.append(
                f"nvidia_kernel_modules = 'open': the open kernel modules cannot drive the "
                f"{_names(needs_proprietary)} (before Turing); set nvidia_kernel_modules to "
                "'proprietary' or leave it unset"
            )
        return pinned, "set by nvidia_kernel_modules", problems
    if needs_open:
        return KernelModules.OPEN, f"the {_names(needs_open)} needs them", problems
    if needs_proprietary:
        return (
            KernelModules.PROPRIETARY,
            f"the open modules cannot drive the {_names(needs_proprietary)}",
            problems,
        )
    datacenter = bool(bus.known) and all(model.datacenter for _, model in bus.known)
    if datacenter and branch >= FIRST_OPEN_MODULES_BRANCH:
        return KernelModules.OPEN, "data center GPUs, production-ready from R515", problems
    if branch >= OPEN_MODULES_DEFAULT_BRANCH:
        return KernelModules.OPEN, f"NVIDIA's default from R{OPEN_MODULES_DEFAULT_BRANCH}", problems
    return KernelModules.PROPRIETARY, f"R{branch}'s default", problems


def _names(gpus: list[HostGpu]) -> str:
    return ", ".join(sorted({gpu.describe() for gpu in gpus}))


@dataclass(frozen=True)
class FrameworkCoverage:
    """Per GPU on the host, how the framework image covers it."""

    grades: tuple[tuple[HostGpu, Coverage], ...] = ()
    warnings: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


def framework_coverage(
    bus: PciBus, image: str, tensorflow_version: str | None, allow_unsupported: bool
) -> FrameworkCoverage:
    """
    The image's coverage of each known GPU: a warning for JIT-only ones (the first start
    compiles every kernel), a problem for unsupported ones (a warning with
    ``allow_unsupported``). An image gpufleet has no build table for is not graded.
    """
    build = TENSORFLOW_BUILDS.get(tensorflow_version or "")
    if build is None:
        return FrameworkCoverage()
    known = bus.known
    grades = tuple((gpu, coverage(build, model)) for gpu, model in known)
    jit = [gpu for gpu, grade in grades if grade is Coverage.JIT]
    unsupported = [gpu for gpu, grade in grades if grade is Coverage.UNSUPPORTED]
    unsupported_models = [model for gpu, model in known if gpu in unsupported]
    warnings = []
    if jit:
        warnings.append(
            f"tensorflow_image = {image!r}: {build.framework} carries machine code for compute "
            f"{', '.join(build.machine_code)} and PTX for {', '.join(build.ptx)} only, so on "
            f"the {_names(jit)} its kernels are JIT-compiled at the first start (TensorFlow "
            "warns it can take 30 minutes) and kept in the CUDA JIT cache: give containers a "
            "persistent cache big enough (CUDA_CACHE_MAXSIZE, CUDA_CACHE_PATH)"
        )
    problems = []
    if unsupported:
        newer = [
            version
            for version, other in TENSORFLOW_BUILDS.items()
            if all(
                coverage(other, model) is not Coverage.UNSUPPORTED for model in unsupported_models
            )
        ]
        message = (
            f"tensorflow_image = {image!r}: {build.framework} with cuDNN {build.cudnn} does not "
            f"support the {_names(unsupported)} (cuDNN {build.cudnn} stops at "
            f"{build.cudnn_newest_architecture.value})"
        )
        if allow_unsupported:
            warnings.append(f"{message}; installing anyway (gpu_allow_unsupported_framework)")
        else:
            fix = (
                f"TensorFlow releases gpufleet knows that support it: {', '.join(newer)}"
                if newer
                else "no TensorFlow release gpufleet knows supports it"
            )
            problems.append(
                f"{message}; {fix}; or set gpu_allow_unsupported_framework: true to install "
                "the stack anyway"
            )
    return FrameworkCoverage(grades, tuple(warnings), tuple(problems))
