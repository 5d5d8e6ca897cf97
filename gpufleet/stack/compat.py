"""
The compatibility planner: the one place that knows which NVIDIA driver, CUDA, cuDNN, TensorFlow
and OS releases go together.

Everything here is a pure function of plain values (inventory data and host facts), so the deploy
can refuse a bad combination before its first operation, and tests can check the tables directly.
Sources: NVIDIA's CUDA release notes (toolkit/driver table and minor-version compatibility),
NVIDIA's repository listings, TensorFlow's tested build configurations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from gpufleet.stack.catalog import cuda_package_name
from gpufleet.stack.versions import CudnnPin, major_minor

# Toolkit release -> the driver it needs in the usual pairing (Linux, from the CUDA release notes).
CUDA_RELEASE_MIN_DRIVER: dict[str, str] = {
    "11.0.2": "450.51.05",
    "11.0.3": "450.51.06",
    "11.1.0": "455.23.05",
    "11.1.1": "455.32.00",
    "11.2.0": "460.27.03",
    "11.2.1": "460.32.03",
    "11.2.2": "460.32.03",
    "11.3.0": "465.19.01",
    "11.3.1": "465.19.01",
    "11.4.0": "470.42.01",
    "11.4.4": "470.82.01",
    "11.5.0": "495.29.05",
    "11.6.0": "510.39.01",
    "11.7.0": "515.43.04",
    "11.8.0": "520.61.05",
    "12.0.0": "525.60.13",
    "12.1.0": "530.30.02",
    "12.2.0": "535.54.03",
    "12.2.2": "535.104.05",
}

# Minor-version compatibility: any toolkit of a major release runs on at least this driver
# (without PTX JIT of newer code); below it the CUDA runtime refuses to start.
MINOR_VERSION_COMPAT_MIN_DRIVER: dict[str, str] = {
    "11": "450.80.02",
    "12": "525.60.13",
}

# cuDNN major.minor -> the CUDA builds NVIDIA published for it (package suffix +cudaX.Y).
CUDNN_CUDA_BUILDS: dict[str, tuple[str, ...]] = {
    "8.0": ("10.1", "10.2", "11.0"),
    "8.1": ("10.2", "11.2"),
    "8.2": ("10.2", "11.4"),
    "8.6": ("10.2", "11.8"),
    "8.9": ("11.8", "12.2"),
}


@dataclass(frozen=True)
class TensorflowStack:
    cuda: str
    cudnn: str
    python_min: str
    python_max: str


# TensorFlow's tested build configurations (GPU, Linux).
TENSORFLOW_STACKS: dict[str, TensorflowStack] = {
    "2.5": TensorflowStack("11.2", "8.1", "3.6", "3.9"),
    "2.6": TensorflowStack("11.2", "8.1", "3.6", "3.9"),
    "2.7": TensorflowStack("11.2", "8.1", "3.7", "3.9"),
    "2.8": TensorflowStack("11.2", "8.1", "3.7", "3.10"),
    "2.9": TensorflowStack("11.2", "8.1", "3.7", "3.10"),
    "2.10": TensorflowStack("11.2", "8.1", "3.7", "3.10"),
    "2.11": TensorflowStack("11.2", "8.1", "3.7", "3.10"),
    "2.12": TensorflowStack("11.8", "8.6", "3.8", "3.11"),
}

# NVIDIA's CUDA apt repository directory per OS release, and the CUDA releases it carries.
CUDA_REPO_RELEASES: dict[str, tuple[str, ...]] = {
    "ubuntu1804": (
        "10.0",
        "10.1",
        "10.2",
        "11.0",
        "11.1",
        "11.2",
        "11.3",
        "11.4",
        "11.5",
        "11.6",
        "11.7",
        "11.8",
        "12.0",
        "12.1",
        "12.2",
    ),
    "ubuntu2004": (
        "11.0",
        "11.1",
        "11.2",
        "11.3",
        "11.4",
        "11.5",
        "11.6",
        "11.7",
        "11.8",
        "12.0",
        "12.1",
        "12.2",
    ),
    "ubuntu2204": ("11.7", "11.8", "12.0", "12.1", "12.2"),
    "debian11": ("11.4", "11.5", "11.6", "11.7", "11.8", "12.0", "12.1", "12.2"),
    "debian12": ("12.2",),
}

SUPPORTED_OS: dict[str, tuple[str, ...]] = {
    "ubuntu": ("20.04", "22.04"),
    "debian": ("11", "12"),
}

NVIDIA_CUDA_REPO_BASE = "https://developer.download.nvidia.com/compute/cuda/repos"
# The 2022 CUDA repository key (3bf863cc) that replaced the withdrawn 7fa2af80.
NVIDIA_CUDA_KEY_FINGERPRINT = "EB693B3035CD5710E231E123A4B469963BF863CC"
NVIDIA_CONTAINER_REPO_URL = "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH)/"
NVIDIA_CONTAINER_KEY_URL = "https://nvidia.github.io/libnvidia-container/gpgkey"
NVIDIA_CONTAINER_KEY_FINGERPRINT = "C95B321B61E88C1809C4F759DDCAE044F796ECB0"

# The shapes of the versions that become package names and pins (gpufleet/settings.py checks
# inventory data against them too, before anything builds a package name).
DRIVER_BRANCH = re.compile(r"\d{3}")
DRIVER_VERSION = re.compile(r"\d{3}\.\d{2,3}(\.\d{2})?")
CUDNN_VERSION = re.compile(r"\d+\.\d+\.\d+\.\d+")
CONTAINER_TOOLKIT_VERSION = re.compile(r"1\.\d+\.\d+(~rc\.\d+)?")


@dataclass(frozen=True)
class StackRequest:
    """The inventory's wishes, as plain values (read from host.data by the deploy layer)."""

    nvidia_driver_branch: str
    nvidia_driver_version: str
    cuda_version: str
    cuda_package_version: str
    cudnn_version: str
    nvidia_container_toolkit_version: str
    tensorflow_image: str
    nvidia_cuda_repo_url: str | None


@dataclass(frozen=True)
class HostPlatform:
    """What the planner needs to know about the host (from facts)."""

    os_id: str
    os_version_id: str

    @classmethod
    def from_os_release(cls, os_release: dict[str, str]) -> HostPlatform:
        return cls(
            os_id=os_release.get("ID", "unknown"), os_version_id=os_release.get("VERSION_ID", "")
        )

    @property
    def cuda_repo_release(self) -> str:
        return f"{self.os_id}{self.os_version_id.replace('.', '')}"


def _version(value: str) -> Version | None:
    try:
        return Version(value)
    except InvalidVersion:
        return None


def cuda_releases(cuda_version: str) -> list[str]:
    return [release for release in CUDA_RELEASE_MIN_DRIVER if major_minor(release) == cuda_version]


def tensorflow_version_of_image(image: str) -> str | None:
    """tensorflow/tensorflow:2.9.0-gpu -> 2.9 (None when the tag names no release)."""
    match = re.search(r":(\d+)\.(\d+)(?:\.\d+)?(?:-|$)", image)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def cuda_repo_url(release: str) -> str:
    """NVIDIA's CUDA repository for an OS release directory, e.g. ubuntu2004."""
    return f"{NVIDIA_CUDA_REPO_BASE}/{release}/x86_64/"


def check_stack(request: StackRequest, platform: HostPlatform) -> list[str]:
    """Every problem with the requested stack on this host, each naming its data key."""
    problems: list[str] = []
    problems += _check_os(platform)
    problems += _check_driver(request)
    cuda_problems = _check_cuda(request)
    problems += cuda_problems
    if not cuda_problems:
        problems += _check_driver_for_cuda(request)
        problems += _check_cudnn(request)
        problems += _check_tensorflow(request)
        problems += _check_repo(request, platform)
    problems += _check_container_toolkit(request)
    return problems


def _check_os(platform: HostPlatform) -> list[str]:
    releases = SUPPORTED_OS.get(platform.os_id)
    if releases is None or platform.os_version_id not in releases:
        supported = ", ".join(f"{os_id} {r}" for os_id, rs in SUPPORTED_OS.items() for r in rs)
        return [
            f"host OS {platform.os_id} {platform.os_version_id} is not supported "
            f"(gpufleet supports {supported})"
        ]
    return []


def _check_driver(request: StackRequest) -> list[str]:
    branch, version = request.nvidia_driver_branch, request.nvidia_driver_version
    if not DRIVER_BRANCH.fullmatch(branch):
        return [f"nvidia_driver_branch = {branch!r} is not a driver branch; use e.g. '470'"]
    if not DRIVER_VERSION.fullmatch(version):
        return [
            f"nvidia_driver_version = {version!r} is not a driver version; "
            "use the full upstream version, e.g. '470.182.03'"
        ]
    if version.split(".")[0] != branch:
        return [
            f"nvidia_driver_version = {version!r} is not on nvidia_driver_branch = {branch!r}; "
            f"set nvidia_driver_branch to {version.split('.')[0]!r} or pick a {branch}.x version"
        ]
    return []


def _check_cuda(request: StackRequest) -> list[str]:
    releases = cuda_releases(request.cuda_version)
    if not releases:
        known = sorted({major_minor(r) for r in CUDA_RELEASE_MIN_DRIVER}, key=Version)
        return [
            f"cuda_version = {request.cuda_version!r} is not a CUDA release gpufleet knows; "
            f"known: {', '.join(known)} (TensorFlow 2.9 needs '11.2')"
        ]
    if request.cuda_package_version not in releases:
        return [
            f"cuda_package_version = {request.cuda_package_version!r} is not a CUDA "
            f"{request.cuda_version} release; use one of {', '.join(releases)}"
        ]
    return []


def _check_driver_for_cuda(request: StackRequest) -> list[str]:
    driver = _version(request.nvidia_driver_version)
    if driver is None:
        return []  # already reported by _check_driver
    usual = CUDA_RELEASE_MIN_DRIVER[request.cuda_package_version]
    compat = MINOR_VERSION_COMPAT_MIN_DRIVER[request.cuda_version.split(".")[0]]
    if driver < Version(compat):
        return [
            f"nvidia_driver_version = {request.nvidia_driver_version!r} is too old for CUDA "
            f"{request.cuda_package_version}: it needs driver >= {usual} (or >= {compat} under "
            f"CUDA minor-version compatibility); pin a driver at or above {usual}"
        ]
    return []


def _check_cudnn(request: StackRequest) -> list[str]:
    if not CUDNN_VERSION.fullmatch(request.cudnn_version):
        return [
            f"cudnn_version = {request.cudnn_version!r} is not a full cuDNN package version; "
            "use e.g. '8.1.1.33'"
        ]
    cudnn_series = CudnnPin(request.cudnn_version).series
    builds = CUDNN_CUDA_BUILDS.get(cudnn_series)
    if builds is None:
        return [f"cudnn_version = {request.cudnn_version!r} is not a cuDNN release gpufleet knows"]
    if request.cuda_version not in builds:
        fitting = [
            series for series, cudas in CUDNN_CUDA_BUILDS.items() if request.cuda_version in cudas
        ]
        return [
            f"cudnn_version = {request.cudnn_version!r}: cuDNN {cudnn_series} was built for CUDA "
            f"{', '.join(builds)}, not cuda_version = {request.cuda_version!r}; for CUDA "
            f"{request.cuda_version} use cuDNN {' or '.join(fitting) or '(none known)'}"
        ]
    return []


def _check_tensorflow(request: StackRequest) -> list[str]:
    tf_version = tensorflow_version_of_image(request.tensorflow_image)
    if tf_version is None:
        return []  # a custom image: the smoke test will tell
    stack = TENSORFLOW_STACKS.get(tf_version)
    if stack is None:
        return [
            f"tensorflow_image = {request.tensorflow_image!r}: TensorFlow {tf_version} is not in "
            f"gpufleet's table; known: {', '.join(TENSORFLOW_STACKS)}"
        ]
    problems = []
    if request.cuda_version != stack.cuda:
        problems.append(
            f"cuda_version = {request.cuda_version!r} does not fit tensorflow_image = "
            f"{request.tensorflow_image!r}: TensorFlow {tf_version} needs CUDA {stack.cuda}"
        )
    if CudnnPin(request.cudnn_version).series != stack.cudnn:
        problems.append(
            f"cudnn_version = {request.cudnn_version!r} does not fit tensorflow_image = "
            f"{request.tensorflow_image!r}: TensorFlow {tf_version} needs cuDNN {stack.cudnn}"
        )
    return problems


def python_fits_tensorflow(python_version: str, tf_version: str) -> bool:
    stack = TENSORFLOW_STACKS[tf_version]
    python = Version(major_minor(python_version))
    return Version(stack.python_min) <= python <= Version(stack.python_max)


def _check_repo(request: StackRequest, platform: HostPlatform) -> list[str]:
    if request.nvidia_cuda_repo_url:
        return []  # an explicit mirror is trusted to carry the packages whatever the OS
    release = platform.cuda_repo_release
    carried = CUDA_REPO_RELEASES.get(release, ())
    if request.cuda_version in carried:
        return []
    where = [r for r, cudas in CUDA_REPO_RELEASES.items() if request.cuda_version in cudas]
    return [
        f"nvidia_cuda_repo_url is not set and NVIDIA's {release} repository does not carry CUDA "
        f"{request.cuda_version} (it is published for {', '.join(where) or 'no supported OS'}); "
        f"set nvidia_cuda_repo_url to a mirror that carries "
        f"{cuda_package_name(request.cuda_version)}, or use an OS from that list"
    ]


def _check_container_toolkit(request: StackRequest) -> list[str]:
    version = request.nvidia_container_toolkit_version
    if not CONTAINER_TOOLKIT_VERSION.fullmatch(version):
        return [
            f"nvidia_container_toolkit_version = {version!r} is not a 1.x toolkit release; "
            "use e.g. '1.17.4'"
        ]
    return []
