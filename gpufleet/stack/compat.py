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
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TypedDict

from packaging.version import InvalidVersion, Version

from gpufleet.stack import urls
from gpufleet.stack.catalog import (
    FIRST_OPEN_MODULES_BRANCH,
    DriverChoice,
    DriverSource,
    KernelModules,
    cuda_package_name,
    cuda_toolkit_packages,
    cudnn_packages,
    kernel_flavour,
)
from gpufleet.stack.hardware import (
    FrameworkCoverage,
    PciBus,
    branch_problems,
    framework_coverage,
    module_flavour,
)
from gpufleet.stack.installers import (
    CUDA_RELEASE_MIN_DRIVER,
    AptCarries,
    CudaInstallMethod,
    CudnnInstallMethod,
    InstallMethods,
    resolve_methods,
)
from gpufleet.stack.repositories import (
    CUDA_REPOSITORIES,
    KEY_3BF863CC,
    CudaRepository,
    DriverNaming,
    repository_named_in,
    repository_of,
)
from gpufleet.stack.versions import CudnnPin, major_minor

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
# Every release of a cuDNN series, where gpufleet knows them all (SOURCES.md, section 8): a pin
# outside them is refused while planning, before the host's apt could be asked.
CUDNN_RELEASES: dict[str, tuple[str, ...]] = {
    "8.1": ("8.1.0.77", "8.1.1.33"),
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

# The OS releases gpufleet provisions: those NVIDIA has a CUDA repository for.
SUPPORTED_OS: dict[str, tuple[str, ...]] = {
    "ubuntu": ("20.04", "22.04", "24.04"),
    "debian": ("11", "12", "13"),
}

# The driver gpufleet installs unless told otherwise: R580, the long-term branch (supported to
# June 2028; it drives Maxwell to Blackwell and runs CUDA 11.x applications), where the host's
# repository carries it, else the newest branch it carries that gpufleet pins a release of.
DEFAULT_DRIVER_BRANCH = "580"
# gpufleet's exact release per branch: what nvidia_driver_version defaults to (SOURCES.md).
DRIVER_RELEASES: dict[str, str] = {
    "470": "470.182.03",
    "535": "535.183.01",
    "580": "580.159.04",
}
# From this branch NVIDIA's Ubuntu packages drop the branch from their names: not catalogued yet.
FIRST_UNSUFFIXED_UBUNTU_BRANCH = 590

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

    nvidia_driver_branch: str | None
    nvidia_driver_version: str | None
    nvidia_kernel_modules: KernelModules | None
    nvidia_driver_headless: bool
    cuda_version: str
    cuda_package_version: str
    cudnn_version: str
    nvidia_container_toolkit_version: str
    tensorflow_image: str
    nvidia_cuda_repo_url: str | None
    cuda_install_method: CudaInstallMethod = CudaInstallMethod.AUTO
    cudnn_install_method: CudnnInstallMethod = CudnnInstallMethod.AUTO
    allow_unsupported_framework: bool = False
    nvidia_driver_source: DriverSource = DriverSource.NVIDIA
    # Ubuntu's archive: the flavour of the signed modules (None: the running kernel's).
    nvidia_kernel_flavour: str | None = None
    # Paths on the host of the Machine Owner Key DKMS signs the modules with (both or neither).
    module_signing_key: str | None = None
    module_signing_cert: str | None = None


@dataclass(frozen=True)
class HostPlatform:
    """What the planner needs to know about the host (from facts)."""

    os_id: str
    os_version_id: str
    bus: PciBus = PciBus()
    # Whether the host booted with UEFI Secure Boot on (None: unknown).
    secure_boot: bool | None = None
    kernel_release: str = ""

    @classmethod
    def from_os_release(
        cls,
        os_release: dict[str, str],
        bus: PciBus | None = None,
        secure_boot: bool | None = None,
        kernel_release: str | None = None,
    ) -> HostPlatform:
        return cls(
            os_id=os_release.get("ID", "unknown"),
            os_version_id=os_release.get("VERSION_ID", ""),
            bus=bus or PciBus(),
            secure_boot=secure_boot,
            kernel_release=kernel_release or "",
        )

    @property
    def naming(self) -> DriverNaming:
        """How NVIDIA's repository for this OS names the driver packages."""
        return DriverNaming.DEBIAN if self.os_id == "debian" else DriverNaming.UBUNTU


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


@dataclass(frozen=True)
class StackPlan:
    """What the host gets: its CUDA repository (None: a mirror gpufleet knows nothing of), the
    driver chosen for it, how its toolkit and cuDNN are installed, what was decided from its
    GPUs and why (``notes``), and what works but deserves a look (``warnings``)."""

    repository: CudaRepository | None
    repository_url: str
    driver: DriverChoice
    methods: InstallMethods
    coverage: FrameworkCoverage = FrameworkCoverage()
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def host_repository(request: StackRequest, platform: HostPlatform) -> CudaRepository | None:
    """NVIDIA's repository for the host, or the one a mirror's URL names (None for neither)."""
    if request.nvidia_cuda_repo_url:
        return repository_named_in(request.nvidia_cuda_repo_url)
    return repository_of(platform.os_id, platform.os_version_id)


def default_driver_branch(repository: CudaRepository | None) -> str:
    if repository is None or DEFAULT_DRIVER_BRANCH in repository.driver_branches:
        return DEFAULT_DRIVER_BRANCH
    pinned = [branch for branch in repository.driver_branches if branch in DRIVER_RELEASES]
    return pinned[-1] if pinned else DEFAULT_DRIVER_BRANCH


def plan_stack(
    request: StackRequest,
    platform: HostPlatform,
    offers: Mapping[str, list[AptOffer]] | None = None,
    installed: Mapping[str, str] | None = None,
) -> tuple[StackPlan | None, list[str]]:
    """The host's plan, or None with every problem of the request on this host, each naming
    its data key, the value and what would work. ``offers`` and ``installed`` are the host's
    apt view (see apt_carries), which decides the ``auto`` install methods."""
    problems = _check_os(platform)
    if problems:
        return None, problems
    repository = host_repository(request, platform)
    url = request.nvidia_cuda_repo_url or (repository.url if repository else "")
    driver, notes, problems = _choose_driver(request, platform, repository, offers or {})
    methods = resolve_methods(
        request.cuda_install_method,
        request.cudnn_install_method,
        apt_carries(request, repository, url, offers or {}, installed or {}),
    )
    cuda_problems = _check_cuda(request)
    problems += cuda_problems
    if not cuda_problems:
        if driver is not None:
            problems += _check_driver_for_cuda(request, driver.version)
        problems += _check_cudnn(request)
        problems += _check_tensorflow(request)
        problems += _check_repository(request, repository, methods)
    problems += _check_container_toolkit(request)
    problems += _check_secure_boot(request, platform)
    coverage = framework_coverage(
        platform.bus,
        request.tensorflow_image,
        tensorflow_version_of_image(request.tensorflow_image),
        request.allow_unsupported_framework,
    )
    problems += coverage.problems
    if problems or driver is None:
        return None, problems
    summary = (platform.bus.summary(), *notes, f"Secure Boot: {_secure_boot_text(platform)}")
    return StackPlan(repository, url, driver, methods, coverage, summary, coverage.warnings), []


def apt_carries(
    request: StackRequest,
    repository: CudaRepository | None,
    repository_url: str,
    offers: Mapping[str, list[AptOffer]],
    installed: Mapping[str, str],
) -> AptCarries:
    """
    Whether the host's CUDA repository offers the pinned toolkit and cuDNN: as the host's apt
    reports it once it has the repository's lists (an installed version counts as offered),
    else as gpufleet's catalog of NVIDIA's repository says; a mirror of no known directory
    without lists yet is taken to carry them (its apt answers on the next run).
    """
    toolkit = cuda_toolkit_packages(request.cuda_version, request.cuda_package_version)
    cudnn = cudnn_packages(request.cudnn_version, request.cuda_version)
    if _has_lists(offers, repository_url):
        return AptCarries(
            cuda=_offered(toolkit, offers, installed), cudnn=_offered(cudnn, offers, installed)
        )
    if repository is None:
        return AptCarries(cuda=True, cudnn=True)
    return AptCarries(
        cuda=request.cuda_version in repository.cuda_releases,
        cudnn=request.cuda_version in repository.cudnn8_cuda_builds,
    )


def _choose_driver(
    request: StackRequest,
    platform: HostPlatform,
    repository: CudaRepository | None,
    offers: Mapping[str, list[AptOffer]],
) -> tuple[DriverChoice | None, list[str], list[str]]:
    """The host's driver, the notes on how it was chosen, or the problems."""
    branch, version = request.nvidia_driver_branch, request.nvidia_driver_version
    if branch is None:
        branch = version.split(".")[0] if version else default_driver_branch(repository)
    ubuntu_archive = request.nvidia_driver_source is DriverSource.UBUNTU
    flavour = ""
    if ubuntu_archive:
        flavour, problems = _ubuntu_archive_problems(request, platform, branch, offers)
        if problems:
            return None, [], problems
        # The archive's only versions are those its host's apt offers.
        repository = None
    if version is None:
        version = DRIVER_RELEASES.get(branch)
        if version is None:
            return (
                None,
                [],
                [
                    f"nvidia_driver_version is not set and gpufleet pins no release of "
                    f"nvidia_driver_branch = {branch!r}; set nvidia_driver_version to an exact "
                    f"{branch} release, or use a branch gpufleet pins: {', '.join(DRIVER_RELEASES)}"
                ],
            )
    problems = _check_driver(branch, version)
    if problems:
        return None, [], problems
    naming = repository.naming if repository else platform.naming
    setting = (
        f"nvidia_driver_branch = {branch!r}"
        if request.nvidia_driver_branch
        else f"nvidia_driver_branch (default {branch!r})"
    )
    candidates = [
        b for b in DRIVER_RELEASES if repository is None or b in repository.driver_branches
    ]
    problems += branch_problems(platform.bus, int(branch), setting, candidates)
    if repository and not ubuntu_archive and branch not in repository.driver_branches:
        pinned = [b for b in DRIVER_RELEASES if b in repository.driver_branches]
        fix = (
            f"set nvidia_driver_branch to one gpufleet pins a release of: {', '.join(pinned)}"
            if pinned
            else "gpufleet pins a release of none of them: set nvidia_driver_branch and "
            "nvidia_driver_version to one of their releases"
        )
        problems.append(
            f"{setting}: NVIDIA's {repository.directory} repository has no R{branch} driver "
            "packages; it carries "
            f"{', '.join(repository.driver_branches)}: {fix}"
        )
    if (
        naming is DriverNaming.UBUNTU
        and not ubuntu_archive
        and int(branch) >= FIRST_UNSUFFIXED_UBUNTU_BRANCH
    ):
        problems.append(
            f"nvidia_driver_branch = {branch!r}: from R{FIRST_UNSUFFIXED_UBUNTU_BRANCH} "
            "NVIDIA's Ubuntu packages drop the branch from their names, which gpufleet does not "
            f"install yet; use {DEFAULT_DRIVER_BRANCH}"
        )
    modules, why, flavour_problems = module_flavour(
        platform.bus, int(branch), request.nvidia_kernel_modules
    )
    problems += flavour_problems
    if (
        request.nvidia_kernel_modules is KernelModules.OPEN
        and int(branch) < FIRST_OPEN_MODULES_BRANCH
    ):
        problems.append(
            f"nvidia_kernel_modules = 'open': R{branch} has no open kernel modules (they start "
            f"with R{FIRST_OPEN_MODULES_BRANCH}); set it to 'proprietary' or use a newer branch"
        )
    if problems:
        return None, [], problems
    fabric_manager = platform.bus.needs_fabric_manager
    chosen_by = (
        "nvidia_driver_branch"
        if request.nvidia_driver_branch
        else "nvidia_driver_version"
        if request.nvidia_driver_version
        else "gpufleet's default"
    )
    origin, built = (
        (f"R{branch}-server from Ubuntu's archive", f", signed for the {flavour} kernels")
        if ubuntu_archive
        else (f"R{branch}", "")
    )
    notes = [
        f"driver {version} ({origin}, {chosen_by}), {modules.value} kernel modules ({why}){built}",
        f"fabric manager: {'yes, for the NVSwitches' if fabric_manager else 'no (no NVSwitch)'}",
    ]
    choice = DriverChoice(
        naming,
        branch,
        version,
        modules,
        request.nvidia_driver_headless,
        fabric_manager,
        request.nvidia_driver_source,
        flavour,
    )
    return choice, notes, []


def _ubuntu_archive_problems(
    request: StackRequest,
    platform: HostPlatform,
    branch: str,
    offers: Mapping[str, list[AptOffer]],
) -> tuple[str, list[str]]:
    """
    The kernel flavour whose signed modules Ubuntu's archive brings, and what stops the
    archive's driver here: another OS, no exact version (the archive keeps only its newest
    release of a branch, so gpufleet pins none: the host's apt names those it offers), no
    flavour.
    """
    if platform.os_id != "ubuntu":
        return "", [
            f"nvidia_driver_source = 'ubuntu': Ubuntu's archive serves Ubuntu hosts; this host "
            f"runs {platform.os_id} {platform.os_version_id}: set nvidia_driver_source to "
            "'nvidia'"
        ]
    problems = []
    if request.nvidia_driver_version is None:
        utils = f"nvidia-utils-{branch}-server"
        offered = sorted({offer["version"].split("-")[0] for offer in offers.get(utils, [])})
        problems.append(
            f"nvidia_driver_source = 'ubuntu' needs nvidia_driver_version, the exact release of "
            f"R{branch}-server to pin (Ubuntu's archive keeps only its newest): the host's apt "
            f"offers {', '.join(offered) or 'none (is the restricted component enabled?)'}"
        )
    flavour = request.nvidia_kernel_flavour or kernel_flavour(platform.kernel_release)
    if flavour is None:
        problems.append(
            f"nvidia_kernel_flavour is not set and the running kernel "
            f"{platform.kernel_release!r} names no flavour; set it to the flavour of the "
            "Ubuntu kernels the host boots, e.g. 'generic'"
        )
    return flavour or "", problems


def _check_os(platform: HostPlatform) -> list[str]:
    releases = SUPPORTED_OS.get(platform.os_id)
    if releases is None or platform.os_version_id not in releases:
        supported = ", ".join(f"{os_id} {r}" for os_id, rs in SUPPORTED_OS.items() for r in rs)
        return [
            f"host OS {platform.os_id} {platform.os_version_id} is not supported "
            f"(gpufleet supports {supported})"
        ]
    return []


def _check_driver(branch: str, version: str) -> list[str]:
    if not DRIVER_BRANCH.fullmatch(branch):
        return [f"nvidia_driver_branch = {branch!r} is not a driver branch; use e.g. '580'"]
    if not DRIVER_VERSION.fullmatch(version):
        return [
            f"nvidia_driver_version = {version!r} is not a driver version; "
            "use the full upstream version, e.g. '580.126.16'"
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


def _check_driver_for_cuda(request: StackRequest, driver_version: str) -> list[str]:
    driver = _version(driver_version)
    if driver is None:
        return []  # already reported by _check_driver
    usual = CUDA_RELEASE_MIN_DRIVER[request.cuda_package_version]
    compat = MINOR_VERSION_COMPAT_MIN_DRIVER[request.cuda_version.split(".")[0]]
    if driver < Version(compat):
        return [
            f"nvidia_driver_version = {driver_version!r} is too old for CUDA "
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
    releases = CUDNN_RELEASES.get(cudnn_series)
    if releases is not None and request.cudnn_version not in releases:
        return [
            f"cudnn_version = {request.cudnn_version!r} is not a cuDNN {cudnn_series} release: "
            f"NVIDIA published {' and '.join(releases)}; pin one of those"
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


def _check_repository(
    request: StackRequest, repository: CudaRepository | None, methods: InstallMethods
) -> list[str]:
    """What the host's NVIDIA repository cannot provide for what is installed from apt (a
    mirror of no known directory: the host's apt tells, see offer_problems)."""
    if repository is None:
        return []
    problems = []
    if (
        methods.cuda is CudaInstallMethod.APT
        and request.cuda_version not in repository.cuda_releases
    ):
        where = [
            r.directory
            for r in CUDA_REPOSITORIES.values()
            if request.cuda_version in r.cuda_releases
        ]
        problems.append(
            f"cuda_install_method = 'apt': NVIDIA's {repository.directory} repository has no "
            f"{cuda_package_name(request.cuda_version)} (it carries CUDA "
            f"{repository.cuda_releases[0]} to {repository.cuda_releases[-1]}); CUDA "
            f"{request.cuda_version} is published for {', '.join(where) or 'no supported OS'}: "
            "set cuda_install_method to 'runfile' (NVIDIA's CUDA runfile), or set "
            "nvidia_cuda_repo_url to a mirror of one of those repositories"
        )
    if (
        methods.cudnn is CudnnInstallMethod.APT
        and request.cuda_version not in repository.cudnn8_cuda_builds
    ):
        problems.append(
            f"cudnn_install_method = 'apt': NVIDIA's {repository.directory} repository has no "
            f"libcudnn8 build for CUDA {request.cuda_version}; set cudnn_install_method to "
            "'archive' (NVIDIA's cuDNN tar archive)"
        )
    return problems


def repository_key_fingerprint(repository: CudaRepository | None) -> str:
    return (repository.key if repository else KEY_3BF863CC).fingerprint


def repository_key_url(repository_url: str, repository: CudaRepository | None) -> str:
    return repository_url + (repository.key if repository else KEY_3BF863CC).file_name


def _check_secure_boot(request: StackRequest, platform: HostPlatform) -> list[str]:
    """An unsigned DKMS-built module does not load under Secure Boot, and nothing says why."""
    key, cert = request.module_signing_key, request.module_signing_cert
    if bool(key) != bool(cert):
        given, missing = (
            ("nvidia_module_signing_key", "nvidia_module_signing_cert")
            if key
            else ("nvidia_module_signing_cert", "nvidia_module_signing_key")
        )
        return [
            f"{given} is set but {missing} is not: DKMS signs with the key and the certificate "
            "together; set both"
        ]
    signed = request.nvidia_driver_source is DriverSource.UBUNTU
    if platform.secure_boot and not key and not signed:
        ubuntu = (
            "or, on Ubuntu, set nvidia_driver_source to 'ubuntu' for Canonical's signed "
            "precompiled modules"
            if platform.os_id == "ubuntu"
            else ""
        )
        return [
            "Secure Boot is enabled on this host and the NVIDIA kernel modules are built by "
            "DKMS: unsigned, the kernel would refuse to load them. Set "
            "nvidia_module_signing_key and nvidia_module_signing_cert to the paths on the host "
            "of a Machine Owner Key you enrolled (mokutil --import), which DKMS signs the "
            f"modules with{'; ' + ubuntu if ubuntu else ''}"
        ]
    return []


def _secure_boot_text(platform: HostPlatform) -> str:
    if platform.secure_boot is None:
        return "unknown"
    return "enabled" if platform.secure_boot else "off"


def _check_container_toolkit(request: StackRequest) -> list[str]:
    version = request.nvidia_container_toolkit_version
    if not CONTAINER_TOOLKIT_VERSION.fullmatch(version):
        return [
            f"nvidia_container_toolkit_version = {version!r} is not a 1.x toolkit release; "
            "use e.g. '1.17.4'"
        ]
    return []


class AptOffer(TypedDict):
    """A version of a package apt's lists offer (``apt-cache madison``)."""

    version: str
    source: str  # the index's URL as apt-cache prints it, e.g. https://host/path


def offer_problems(
    pins: dict[str, dict[str, str | None]],
    offers: Mapping[str, list[AptOffer]],
    installed: Mapping[str, str],
    repository_url: str | None,
) -> list[str]:
    """
    The pinned versions the host's apt does not offer, once apt has the repository's lists
    (an earlier run added it): ``pins`` maps "data_key = value" to the packages it pins, and
    ``installed`` holds the installed versions, which count as offered. A mirror then answers
    for itself instead of being trusted. ``repository_url`` None stands for the host's own OS
    archive, whose lists count as there when it offers any of a setting's packages.
    """
    if repository_url is not None and not _has_lists(offers, repository_url):
        return []
    where = (
        f"with the repository at {urls.redact(repository_url)}"
        if repository_url is not None
        else "from the OS archive"
    )
    problems = []
    for setting, packages in pins.items():
        if repository_url is None and not any(offers.get(name) for name in packages):
            continue
        missing = []
        for package, pattern in packages.items():
            versions = _versions(package, offers, installed)
            if not any(fnmatchcase(version, pattern or "*") for version in versions):
                missing.append(f"{package} {pattern} (offered: {', '.join(versions) or 'none'})")
        if missing:
            problems.append(
                f"{setting}: the host's apt, {where}, offers no {'; no '.join(missing)}; pin a "
                "version it offers, or fix the mirror"
            )
    return problems


def _has_lists(offers: Mapping[str, list[AptOffer]], repository_url: str) -> bool:
    """Whether the host's apt has the repository's lists (it offers something from there)."""
    # apt substitutes $(ARCH) in a source's URL; the lists are those of the part before it.
    repository = urls.location(repository_url).split("$(ARCH)")[0]
    return any(repository in offer["source"] for versions in offers.values() for offer in versions)


def _versions(
    package: str, offers: Mapping[str, list[AptOffer]], installed: Mapping[str, str]
) -> list[str]:
    """The versions apt offers of ``package``, and the installed one."""
    versions = [offer["version"] for offer in offers.get(package, [])]
    if package in installed:
        versions.append(installed[package])
    return list(dict.fromkeys(versions))  # the installed one is usually offered


def _offered(
    packages: dict[str, str | None],
    offers: Mapping[str, list[AptOffer]],
    installed: Mapping[str, str],
) -> bool:
    return all(
        any(fnmatchcase(version, pattern or "*") for version in _versions(name, offers, installed))
        for name, pattern in packages.items()
    )
