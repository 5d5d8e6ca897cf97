"""NVIDIA GPUs as the PCI bus shows them: which architecture a device id is, which driver
branches and kernel modules can drive it, and how much of a TensorFlow build runs on it.

Pure knowledge (no pyinfra, no I/O). Every id, capability and branch below is cited in
gpufleet/stack/SOURCES.md, section "GPUs on the PCI bus, driver branches per architecture,
framework coverage"; what could not be confirmed is marked there.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Architecture(str, Enum):
    """NVIDIA GPU architectures, oldest first: the declaration order is the age order."""

    KEPLER = "Kepler"
    MAXWELL = "Maxwell"
    PASCAL = "Pascal"
    VOLTA = "Volta"
    TURING = "Turing"
    AMPERE = "Ampere"
    ADA = "Ada Lovelace"
    HOPPER = "Hopper"
    BLACKWELL = "Blackwell"

    @property
    def age(self) -> int:
        """0 for the oldest architecture; a larger number is a newer one."""
        return ARCHITECTURE_ORDER.index(self)

    def newer_than(self, other: Architecture) -> bool:
        return self.age > other.age


# Enum iteration follows declaration order, which is the age order.
ARCHITECTURE_ORDER: tuple[Architecture, ...] = tuple(Architecture)


class OpenModules(str, Enum):
    """What NVIDIA's open GPU kernel modules (nvidia-open) can do for a GPU."""

    UNSUPPORTED = "unsupported"  # before Turing: no GSP, only the proprietary modules drive it
    SUPPORTED = "supported"  # either flavour drives it (open is the default from R560)
    REQUIRED = "required"  # the proprietary modules cannot (Blackwell; Grace Hopper)


@dataclass(frozen=True)
class ArchitectureSupport:
    oldest_branch: int  # first driver branch that drives the architecture
    newest_branch: int | None  # last branch that drives it; None: current branches still do
    open_modules: OpenModules
    first_cuda: str  # first CUDA release that supports the architecture


# Branches before R470 matter to gpufleet only as lower bounds (it pins 470, 535 and 580);
# the pre-Turing oldest branches are the branches current at each launch (not confirmed).
ARCHITECTURES: dict[Architecture, ArchitectureSupport] = {
    Architecture.KEPLER: ArchitectureSupport(295, 470, OpenModules.UNSUPPORTED, "5.0"),
    Architecture.MAXWELL: ArchitectureSupport(334, 580, OpenModules.UNSUPPORTED, "6.5"),
    Architecture.PASCAL: ArchitectureSupport(367, 580, OpenModules.UNSUPPORTED, "8.0"),
    Architecture.VOLTA: ArchitectureSupport(384, 580, OpenModules.UNSUPPORTED, "9.0"),
    Architecture.TURING: ArchitectureSupport(410, None, OpenModules.SUPPORTED, "10.0"),
    Architecture.AMPERE: ArchitectureSupport(450, None, OpenModules.SUPPORTED, "11.0"),
    Architecture.ADA: ArchitectureSupport(520, None, OpenModules.SUPPORTED, "11.8"),
    Architecture.HOPPER: ArchitectureSupport(520, None, OpenModules.SUPPORTED, "11.8"),
    Architecture.BLACKWELL: ArchitectureSupport(570, None, OpenModules.REQUIRED, "12.8"),
}


@dataclass(frozen=True)
class GpuModel:
    name: str  # the product name nvidia-smi prints, where known
    architecture: Architecture
    compute_capability: str  # "8.0"
    datacenter: bool  # a data center GPU (open modules production-ready for these from R515)
    open_modules_required: bool = False  # beyond the architecture's rule (GH200: Grace Hopper)


PCI_VENDOR_NVIDIA = "10de"
GPU_CLASSES = ("0300", "0302")  # VGA compatible controller, 3D controller
# Bridge, other: an NVSwitch (needs the fabric manager). Old nForce chipsets' Ethernet
# controllers carry vendor 10de and class 0680 too, so match NVSWITCH_MODELS where it matters.
NVSWITCH_CLASS = "0680"

_K, _M, _P, _V = Architecture.KEPLER, Architecture.MAXWELL, Architecture.PASCAL, Architecture.VOLTA
_T, _A, _ADA = Architecture.TURING, Architecture.AMPERE, Architecture.ADA
_H, _B = Architecture.HOPPER, Architecture.BLACKWELL

# Lower-case 4-hex PCI device id -> model. Ids from pci.ids, names from NVIDIA's driver
# tables (nvidia-installer's legacy list, open-gpu-kernel-modules' "Compatible GPUs"),
# capabilities from NVIDIA's CUDA GPU compute capability pages.
GPU_MODELS: dict[str, GpuModel] = {
    # Kepler
    "102d": GpuModel("Tesla K80", _K, "3.7", True),
    # Maxwell
    "13f2": GpuModel("Tesla M60", _M, "5.2", True),
    "17fd": GpuModel("Tesla M40", _M, "5.2", True),
    # Pascal
    "15f7": GpuModel("Tesla P100-PCIE-12GB", _P, "6.0", True),
    "15f8": GpuModel("Tesla P100-PCIE-16GB", _P, "6.0", True),
    "15f9": GpuModel("Tesla P100-SXM2-16GB", _P, "6.0", True),
    "1b38": GpuModel("Tesla P40", _P, "6.1", True),
    # Volta
    "1db1": GpuModel("Tesla V100-SXM2-16GB", _V, "7.0", True),
    "1db3": GpuModel("Tesla V100-FHHL-16GB", _V, "7.0", True),
    "1db4": GpuModel("Tesla V100-PCIE-16GB", _V, "7.0", True),
    "1db5": GpuModel("Tesla V100-SXM2-32GB", _V, "7.0", True),
    "1db6": GpuModel("Tesla V100-PCIE-32GB", _V, "7.0", True),
    "1db7": GpuModel("Tesla V100-DGXS-32GB", _V, "7.0", True),
    "1db8": GpuModel("Tesla V100-SXM3-32GB", _V, "7.0", True),
    "1df5": GpuModel("Tesla V100-SXM2-16GB", _V, "7.0", True),
    "1df6": GpuModel("Tesla V100S-PCIE-32GB", _V, "7.0", True),
    # Turing
    "1eb8": GpuModel("Tesla T4", _T, "7.5", True),
    # Ampere: GA100 is 8.0, GA102 (A10, A10G, A40) is 8.6
    "20b0": GpuModel("NVIDIA A100-SXM4-40GB", _A, "8.0", True),
    "20b1": GpuModel("NVIDIA A100-PCIE-40GB", _A, "8.0", True),
    "20b2": GpuModel("NVIDIA A100-SXM4-80GB", _A, "8.0", True),
    "20b3": GpuModel("NVIDIA A100-SXM-64GB", _A, "8.0", True),
    "20b5": GpuModel("NVIDIA A100 80GB PCIe", _A, "8.0", True),
    "20f1": GpuModel("NVIDIA A100-PCIE-40GB", _A, "8.0", True),
    "20b7": GpuModel("NVIDIA A30", _A, "8.0", True),
    "2235": GpuModel("NVIDIA A40", _A, "8.6", True),
    "2236": GpuModel("NVIDIA A10", _A, "8.6", True),
    "2237": GpuModel("NVIDIA A10G", _A, "8.6", True),
    # Ada Lovelace
    "27b8": GpuModel("NVIDIA L4", _ADA, "8.9", True),
    "26b5": GpuModel("NVIDIA L40", _ADA, "8.9", True),
    "26b9": GpuModel("NVIDIA L40S", _ADA, "8.9", True),
    "2684": GpuModel("NVIDIA GeForce RTX 4090", _ADA, "8.9", False),
    # Hopper
    "2330": GpuModel("NVIDIA H100 80GB HBM3", _H, "9.0", True),
    "2331": GpuModel("NVIDIA H100 PCIe", _H, "9.0", True),
    "2321": GpuModel("NVIDIA H100 NVL", _H, "9.0", True),
    "2339": GpuModel("NVIDIA H100", _H, "9.0", True),
    "2335": GpuModel("NVIDIA H200", _H, "9.0", True),
    "233b": GpuModel("NVIDIA H200 NVL", _H, "9.0", True),
    # Grace Hopper: self-hosted GH100 (0x2340-0x237f), only the open modules drive it
    "2342": GpuModel("NVIDIA GH200 120GB", _H, "9.0", True, open_modules_required=True),
    "2348": GpuModel("NVIDIA GH200 144G HBM3e", _H, "9.0", True, open_modules_required=True),
    # Blackwell: B200 is 10.0, the GB202 RTX PRO 6000 editions are 12.0
    "2901": GpuModel("NVIDIA B200", _B, "10.0", True),
    "2bb1": GpuModel("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", _B, "12.0", False),
    "2bb4": GpuModel("NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition", _B, "12.0", False),
    "2bb5": GpuModel("NVIDIA RTX PRO 6000 Blackwell Server Edition", _B, "12.0", True),
}

# NVSwitch generations confirmed in pci.ids (informational: detection is by NVSWITCH_CLASS).
NVSWITCH_MODELS: dict[str, str] = {
    "1af1": "A100 NVSwitch",  # HGX/DGX A100
    "22a3": "H100 NVSwitch",  # HGX/DGX H100 and H200
}


def _device_id(text: str) -> str:
    """Normalise a PCI device id: 20B2, 0x20b2 and 20b2 all name device 20b2."""
    value = text.strip().lower()
    return value[2:] if value.startswith("0x") else value


def gpu_model(device_id: str) -> GpuModel | None:
    """The model with this PCI device id, or None for an id gpufleet does not know."""
    return GPU_MODELS.get(_device_id(device_id))


def open_modules(model: GpuModel) -> OpenModules:
    if model.open_modules_required:
        return OpenModules.REQUIRED
    return ARCHITECTURES[model.architecture].open_modules


def driven_by(model: GpuModel, branch: int) -> bool:
    """Whether driver branch `branch` (e.g. 535) drives this GPU."""
    support = ARCHITECTURES[model.architecture]
    if branch < support.oldest_branch:
        return False
    return support.newest_branch is None or branch <= support.newest_branch


class Coverage(str, Enum):
    NATIVE = "native"  # the framework ships machine code (SASS) for the GPU's capability
    JIT = "JIT-only"  # only PTX of an older capability: compiled at first start
    UNSUPPORTED = "unsupported"  # newer than the framework's cuDNN, or older than its builds


@dataclass(frozen=True)
class FrameworkBuild:
    framework: str  # "TensorFlow 2.9"
    machine_code: tuple[str, ...]  # compute capabilities with SASS
    ptx: tuple[str, ...]  # compute capabilities with PTX
    cudnn: str  # "8.1"
    cudnn_newest_architecture: Architecture  # newest architecture that cuDNN release supports


# The official pip/docker builds of the TensorFlow releases gpufleet knows (compat.py's
# TENSORFLOW_STACKS): sm_35,sm_50,sm_60,sm_70,sm_75,compute_80 throughout.
_TF_SASS = ("3.5", "5.0", "6.0", "7.0", "7.5")
_TF_PTX = ("8.0",)
TENSORFLOW_BUILDS: dict[str, FrameworkBuild] = {
    version: FrameworkBuild(f"TensorFlow {version}", _TF_SASS, _TF_PTX, "8.1", Architecture.AMPERE)
    for version in ("2.5", "2.6", "2.7", "2.8", "2.9", "2.10", "2.11")
}
TENSORFLOW_BUILDS["2.12"] = FrameworkBuild(
    "TensorFlow 2.12", _TF_SASS, _TF_PTX, "8.6", Architecture.HOPPER
)


def _capability(text: str) -> tuple[int, int]:
    """A capability as numbers, 8.6 -> (8, 6), so that 10.0 compares newer than 9.0."""
    major, minor = text.split(".")
    return int(major), int(minor)


def coverage(build: FrameworkBuild, model: GpuModel) -> Coverage:
    """How the build runs on the GPU, by CUDA's binary compatibility: SASS for X.y runs on
    X.z with z >= y (same major only); PTX for X.y is JIT-compiled on any capability >= X.y."""
    if model.architecture.newer_than(build.cudnn_newest_architecture):
        return Coverage.UNSUPPORTED
    major, minor = _capability(model.compute_capability)
    for sass_major, sass_minor in map(_capability, build.machine_code):
        if sass_major == major and sass_minor <= minor:
            return Coverage.NATIVE
    if any(_capability(ptx) <= (major, minor) for ptx in build.ptx):
        return Coverage.JIT
    return Coverage.UNSUPPORTED
