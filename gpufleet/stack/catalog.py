"""
The packages of each component and the apt version patterns that pin them, as NVIDIA's CUDA and
libnvidia-container repositories and the OS archive name them.

Each function takes the component's version and returns ``{package: apt version pattern}``
(None: any version), the shape apt.pinned_packages installs and holds. Package names that
differ between OS releases would enter here, as an argument of these functions.
"""

from __future__ import annotations

import re

from gpufleet.stack.versions import CudnnPin, any_revision

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
_DRIVER_FAMILY_MEMBER = re.compile(
    "|".join(re.escape(name).replace(r"\{branch\}", r"(\d+)") for name in DRIVER_PACKAGE_FAMILY)
)
# Every versioned kernel's headers package: the running kernel's is among them.
KERNEL_HEADERS_PATTERN = "linux-headers-[0-9]*"

# cuDNN 8's runtime and headers.
CUDNN_PACKAGES = ("libcudnn8", "libcudnn8-dev")

# The toolkit depends on `libnvidia-container-tools (>= V), (<< 2.0.0)`: every package of the
# set is pinned, or apt takes the newest tools under an old toolkit.
CONTAINER_TOOLKIT_PACKAGES = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)

# Debian's and Ubuntu's own docker build.
DOCKER_PACKAGE = "docker.io"

# What the host TensorFlow test's virtualenv needs.
HOST_TEST_PACKAGES = ("python3-venv",)


def driver_packages(branch: str, version: str) -> dict[str, str | None]:
    """Every package of the branch's family, pinned to one upstream version (any revision)."""
    return {
        name.format(branch=branch): any_revision(version)
        for name in DRIVER_PACKAGE_FAMILY
        if name != "libnvidia-ifr1-{branch}" or int(branch) <= LAST_BRANCH_WITH_IFR
    }


def driver_family_branch(package: str) -> str | None:
    """The branch of a driver family package (nvidia-utils-470 -> 470), None for others."""
    member = _DRIVER_FAMILY_MEMBER.fullmatch(package)
    return next(branch for branch in member.groups() if branch) if member else None


def kernel_headers_package(kernel_release: str) -> str:
    """The headers DKMS builds the driver's module against, for one kernel."""
    return f"linux-headers-{kernel_release}"


def cuda_package_name(cuda_version: str) -> str:
    """cuda-toolkit-X-Y: the toolkit alone; cuda-X-Y would drag in an unpinned driver."""
    return "cuda-toolkit-" + cuda_version.replace(".", "-")


def cuda_toolkit_packages(cuda_version: str, package_version: str) -> dict[str, str | None]:
    """The CUDA release's toolkit, pinned to one toolkit release (e.g. 11.2, 11.2.2)."""
    return {cuda_package_name(cuda_version): any_revision(package_version)}


def cudnn_packages(cudnn_version: str, cuda_version: str) -> dict[str, str | None]:
    """cuDNN pinned to its build for the CUDA release (unpinned, apt takes the newest CUDA's)."""
    pattern = CudnnPin(cudnn_version).apt_pattern(cuda_version)
    return {package: pattern for package in CUDNN_PACKAGES}


def container_toolkit_packages(version: str) -> dict[str, str | None]:
    return {package: any_revision(version) for package in CONTAINER_TOOLKIT_PACKAGES}
