"""
The packages of each component and the apt version patterns that pin them, as NVIDIA's CUDA and
libnvidia-container repositories and the OS archive name them.

Each function takes the component's version and returns ``{package: apt version pattern}``
(None: any version), the shape apt.pinned_packages installs and holds. The driver's names differ
between NVIDIA's Ubuntu and Debian repositories (repositories.DriverNaming) and with the kernel
module flavour and the headless choice: a DriverChoice carries all of it. Sources: SOURCES.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from gpufleet.stack.repositories import DriverNaming
from gpufleet.stack.versions import CudnnPin, any_revision


class KernelModules(str, Enum):
    OPEN = "open"
    PROPRIETARY = "proprietary"


class DriverSource(str, Enum):
    # NVIDIA's CUDA repository: its driver packages, modules built by DKMS on the host.
    NVIDIA = "nvidia"
    # Ubuntu's own archive: Canonical's -server builds, with modules Canonical built and signed
    # for each of its kernels (linux-restricted-modules), which load under Secure Boot.
    UBUNTU = "ubuntu"


@dataclass(frozen=True)
class DriverChoice:
    """The driver a host gets: which packages, of which branch, at which exact version."""

    naming: DriverNaming
    branch: str
    version: str
    kernel_modules: KernelModules
    # Without the X server and graphics libraries: what a training server needs.
    headless: bool
    # NVSwitch systems: the fabric manager, at the driver's exact version.
    fabric_manager: bool = False
    source: DriverSource = DriverSource.NVIDIA
    # Ubuntu's archive: the kernel flavour whose signed modules come along ("generic", "aws").
    kernel_flavour: str = ""


# A driver branch's packages as NVIDIA's Ubuntu repositories name them (Canonical's packaging):
# what the kernel module flavour and the headless/full choice select, and the branch-less
# companions each release ships alongside (pinned too, or they float to the newest release).
UBUNTU_KERNEL_PACKAGES = ("nvidia-dkms-{branch}{open}", "nvidia-kernel-source-{branch}{open}")
UBUNTU_HEADLESS_PACKAGES = (
    "nvidia-headless-{branch}{open}",
    "nvidia-headless-no-dkms-{branch}{open}",
    "nvidia-kernel-common-{branch}",
    "libnvidia-compute-{branch}",
    "nvidia-compute-utils-{branch}",
    "libnvidia-cfg1-{branch}",
    "nvidia-utils-{branch}",
    "libnvidia-common-{branch}",
    "libnvidia-decode-{branch}",
    "libnvidia-encode-{branch}",
    "libnvidia-extra-{branch}",
)
UBUNTU_FULL_PACKAGES = (
    "nvidia-driver-{branch}{open}",
    "libnvidia-gl-{branch}",
    "libnvidia-fbc1-{branch}",
    "xserver-xorg-video-nvidia-{branch}",
)
# cuda-drivers-<branch> depends on the proprietary nvidia-driver-<branch>.
UBUNTU_PROPRIETARY_FULL_PACKAGES = ("cuda-drivers-{branch}",)
# NvIFR (libnvidia-ifr1-<branch>) was dropped from the driver in R495.
UBUNTU_IFR_PACKAGES = ("libnvidia-ifr1-{branch}",)
LAST_BRANCH_WITH_IFR = 470
UBUNTU_COMPANIONS = ("nvidia-modprobe",)
UBUNTU_FULL_COMPANIONS = ("nvidia-settings", "libxnvctrl0")

# NVSwitch systems' fabric manager: it refuses to start beside another driver version, so it
# is pinned and held with the driver. Named by branch in both namings up to R575, without the
# branch from R580 (SOURCES.md).
FABRIC_MANAGER_PACKAGES = ("nvidia-fabricmanager-{branch}",)
FABRIC_MANAGER_PACKAGE = "nvidia-fabricmanager"
FIRST_UNSUFFIXED_FABRIC_MANAGER_BRANCH = 580
FABRIC_MANAGER_SERVICE = "nvidia-fabricmanager.service"


def fabric_manager_package(branch: str) -> str:
    if int(branch) >= FIRST_UNSUFFIXED_FABRIC_MANAGER_BRANCH:
        return FABRIC_MANAGER_PACKAGE
    return FABRIC_MANAGER_PACKAGES[0].format(branch=branch)


# Debian's packaging (NVIDIA's debian11/12/13 repositories): one name per role, the branch
# only in the version. Compute-only is nvidia-driver-cuda; nvidia-driver adds the X driver.
DEBIAN_KERNEL_PACKAGES = {
    KernelModules.OPEN: ("nvidia-kernel-open-dkms",),
    KernelModules.PROPRIETARY: ("nvidia-kernel-dkms",),
}
DEBIAN_HEADLESS_PACKAGES = (
    "nvidia-driver-cuda",
    "nvidia-kernel-support",
    "nvidia-alternative",
    "libcuda1",
    "libnvidia-ml1",
    "libnvidia-cfg1",
    "nvidia-smi",
    "nvidia-persistenced",
    "nvidia-modprobe",
    "firmware-nvidia-gsp",
)
DEBIAN_FULL_PACKAGES = (
    "nvidia-driver",
    "nvidia-driver-libs",
    "nvidia-driver-bin",
    "nvidia-vdpau-driver",
    "xserver-xorg-video-nvidia",
    "nvidia-settings",
)
# The open kernel modules exist from R515; firmware-nvidia-gsp (GSP firmware) from R510 (NOT
# FOUND exactly: R525 chosen, the first Debian-named branch the sources list with it).
FIRST_OPEN_MODULES_BRANCH = 515
FIRST_DEBIAN_GSP_FIRMWARE_BRANCH = 525


def _ubuntu_driver_names(choice: DriverChoice) -> list[str]:
    flavour = "-open" if choice.kernel_modules is KernelModules.OPEN else ""
    names = [*UBUNTU_KERNEL_PACKAGES, *UBUNTU_HEADLESS_PACKAGES, *UBUNTU_COMPANIONS]
    if not choice.headless:
        names += [*UBUNTU_FULL_PACKAGES, *UBUNTU_FULL_COMPANIONS]
        if flavour == "":
            names += UBUNTU_PROPRIETARY_FULL_PACKAGES
        if int(choice.branch) <= LAST_BRANCH_WITH_IFR:
            names += UBUNTU_IFR_PACKAGES
    return [name.format(branch=choice.branch, open=flavour) for name in names]


def _debian_driver_names(choice: DriverChoice) -> list[str]:
    names = [*DEBIAN_KERNEL_PACKAGES[choice.kernel_modules], *DEBIAN_HEADLESS_PACKAGES]
    if int(choice.branch) < FIRST_DEBIAN_GSP_FIRMWARE_BRANCH:
        names.remove("firmware-nvidia-gsp")
    if not choice.headless:
        names += DEBIAN_FULL_PACKAGES
    return names


# Canonical's builds in Ubuntu's archive carry the same names with "-server" after the branch;
# without DKMS, nvidia-headless-no-dkms takes nvidia-headless's place and the kernel modules come
# precompiled and signed per kernel flavour: linux-modules-nvidia-535-server-open-generic
# depends on the newest generic kernel's linux-modules-nvidia-535-server-open-<abi>-generic.
UBUNTU_ARCHIVE_BRANCH = "{branch}-server"
UBUNTU_ARCHIVE_HEADLESS_PACKAGES = (
    "nvidia-headless-no-dkms-{branch}{open}",
    "nvidia-kernel-source-{branch}{open}",
    *(name for name in UBUNTU_HEADLESS_PACKAGES if not name.startswith("nvidia-headless")),
)
UBUNTU_SIGNED_MODULES = "linux-modules-nvidia-{branch}{open}-{flavour}"
# The flavours whose signed modules the host read asks apt about when the running kernel's
# decides (its release is read in the same round trip): Ubuntu's general and cloud kernels.
UBUNTU_KERNEL_FLAVOURS = ["generic", "lowlatency", "aws", "azure", "gcp", "oracle", "nvidia"]


# A kernel release's flavour: 5.15.0-126-generic -> generic, 6.8.0-1015-aws -> aws.
_KERNEL_FLAVOUR = re.compile(r"\d+\.\d+\.\d+-\d+-([a-z][a-z0-9.-]*)")


def kernel_flavour(kernel_release: str) -> str | None:
    """The flavour an Ubuntu kernel's release names (None: it names none)."""
    match = _KERNEL_FLAVOUR.fullmatch(kernel_release)
    return match[1] if match else None


def runs_flavour(kernel_release: str, flavour: str) -> bool:
    """Whether the kernel is one of the flavour's: a hardware enablement flavour's kernels
    (generic-hwe-22.04) call themselves by the plain one (6.5.0-45-generic)."""
    return kernel_flavour(kernel_release) == re.sub(r"-hwe-[\d.]+$", "", flavour)


def _ubuntu_archive_driver_names(choice: DriverChoice) -> list[str]:
    names = [*UBUNTU_ARCHIVE_HEADLESS_PACKAGES]
    if not choice.headless:
        names += UBUNTU_FULL_PACKAGES
        if int(choice.branch) <= LAST_BRANCH_WITH_IFR:
            names += UBUNTU_IFR_PACKAGES
    return [
        name.format(branch=UBUNTU_ARCHIVE_BRANCH.format(branch=choice.branch), open=_open(choice))
        for name in names
    ]


def _open(choice: DriverChoice) -> str:
    return "-open" if choice.kernel_modules is KernelModules.OPEN else ""


def signed_module_packages(choice: DriverChoice) -> dict[str, str | None]:
    """
    Canonical's signed modules for the choice's kernel flavour (Ubuntu's archive only), at any
    version: it is the kernel's, and the package follows each new kernel, so it is not held.
    """
    if choice.source is not DriverSource.UBUNTU:
        return {}
    branch = UBUNTU_ARCHIVE_BRANCH.format(branch=choice.branch)
    name = UBUNTU_SIGNED_MODULES.format(
        branch=branch, open=_open(choice), flavour=choice.kernel_flavour
    )
    return {name: None}


def driver_packages(choice: DriverChoice) -> dict[str, str | None]:
    """Every package of the chosen driver, pinned to one upstream version (any revision)."""
    if choice.source is DriverSource.UBUNTU:
        names = _ubuntu_archive_driver_names(choice)
    elif choice.naming is DriverNaming.UBUNTU:
        names = _ubuntu_driver_names(choice)
    else:
        names = _debian_driver_names(choice)
    if choice.fabric_manager:
        names.append(fabric_manager_package(choice.branch))
    return {name: any_revision(choice.version) for name in sorted(names)}


# Every driver package of every branch and flavour, for the host read: dpkg-query globs.
_UBUNTU_NAMES = (
    *FABRIC_MANAGER_PACKAGES,
    *UBUNTU_KERNEL_PACKAGES,
    *UBUNTU_HEADLESS_PACKAGES,
    *UBUNTU_FULL_PACKAGES,
    *UBUNTU_PROPRIETARY_FULL_PACKAGES,
    *UBUNTU_IFR_PACKAGES,
)
_DEBIAN_NAMES = (
    *(name for names in DEBIAN_KERNEL_PACKAGES.values() for name in names),
    *DEBIAN_HEADLESS_PACKAGES,
    *DEBIAN_FULL_PACKAGES,
)
# Canonical's own builds of a branch are other driver families to gpufleet: its -server
# families (nvidia-utils-535-server, ...; the globs above match them) and its precompiled,
# signed kernel modules (linux-modules-nvidia-535-server-open-generic, ...).
CANONICAL_MODULE_PATTERNS = (
    "linux-modules-nvidia-[0-9]*",
    "linux-objects-nvidia-[0-9]*",
    "linux-signatures-nvidia-[0-9]*",
)
DRIVER_PACKAGE_PATTERNS = tuple(
    sorted(
        {
            # The branch's glob also matches the -open and -server names.
            *(name.format(branch="[0-9]*", open="") for name in _UBUNTU_NAMES),
            *CANONICAL_MODULE_PATTERNS,
            FABRIC_MANAGER_PACKAGE,
            *UBUNTU_COMPANIONS,
            *UBUNTU_FULL_COMPANIONS,
            *_DEBIAN_NAMES,
        }
    )
)
_UBUNTU_FAMILY_MEMBER = re.compile(
    "|".join(
        [
            re.escape(name)
            .replace(r"\{branch\}", r"(\d+)(?:-server)?")
            .replace(r"\{open\}", "(?:-open)?")
            for name in _UBUNTU_NAMES
        ]
        + [r"linux-(?:modules|objects|signatures)-nvidia-(\d+)-.+"]
    )
)


def driver_family_branch(package: str) -> str | None:
    """The branch of an Ubuntu-named driver package, NVIDIA's or Canonical's (nvidia-utils-470,
    nvidia-utils-470-server, linux-modules-nvidia-470-generic -> 470), None for others."""
    member = _UBUNTU_FAMILY_MEMBER.fullmatch(package)
    return next(branch for branch in member.groups() if branch) if member else None


# The driver's compute library, in every choice of packages: its version is the driver's.
DRIVER_LIBRARY = re.compile(r"libnvidia-compute-\d+(?:-server)?|libcuda1")


# Shipped beside every release without the branch in their names: their pins move them, and
# nothing replaces them.
COMPANIONS = frozenset({*UBUNTU_COMPANIONS, *UBUNTU_FULL_COMPANIONS})


def is_driver_package(name: str) -> bool:
    """A package of some driver branch or flavour (the companions aside)."""
    return (
        driver_family_branch(name) is not None
        or name == FABRIC_MANAGER_PACKAGE
        or (name in _DEBIAN_NAMES and name not in COMPANIONS)
    )


def replaced_driver_packages(installed: list[str], choice: DriverChoice) -> list[str]:
    """
    The installed driver packages the choice does not keep: another branch's, the other kernel
    module flavour's (they conflict), the graphics part when going headless. Two branches'
    packages ship the same files, so these go before the new ones come.
    """
    wanted = driver_packages(choice)
    return sorted(
        name
        for name in installed
        if is_driver_package(name) and name not in wanted and not _signed_module_of(choice, name)
    )


_SIGNED_MODULE = re.compile(r"linux-(?:modules|objects)-nvidia-(\d+)-server(-open)?-.+")


def _signed_module_of(choice: DriverChoice, name: str) -> bool:
    """Whether ``name`` is one of Canonical's signed module packages the choice installs: the
    flavour's meta package and what it pulls for each kernel ABI."""
    match = _SIGNED_MODULE.fullmatch(name)
    return (
        choice.source is DriverSource.UBUNTU
        and match is not None
        and match[1] == choice.branch
        and bool(match[2]) == (choice.kernel_modules is KernelModules.OPEN)
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
