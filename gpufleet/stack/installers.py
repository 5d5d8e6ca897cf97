"""
NVIDIA's forms of CUDA and cuDNN outside apt: the CUDA runfile and the cuDNN tar archive, for the
OS releases whose NVIDIA repository does not carry the pinned toolkit (CUDA 11.2 is in
ubuntu2004 and older only). What they are called, how they are run and unpacked, and which form
a host gets. Sources: gpufleet/stack/SOURCES.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from gpufleet.stack.catalog import CUDNN_PACKAGES, cuda_package_name
from gpufleet.stack.versions import CudnnPin

# A pinned artifact digest: sha256, as sha256sum prints it.
SHA256 = re.compile(r"[0-9a-f]{64}")

# Where each host keeps the artifacts it received, by sha256, and unpacks them.
HOST_ARTIFACT_DIR = "/var/cache/gpufleet/artifacts"
HOST_SCRATCH_DIR = "/var/cache/gpufleet/tmp"
HOST_LOG_DIR = "/var/log/gpufleet"

NVIDIA_CUDA_DOWNLOAD_BASE = "https://developer.download.nvidia.com/compute/cuda/"

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

# Toolkit release -> the driver its runfile bundles, which is part of the file's name
# (cuda_11.2.2_460.32.03_linux.run): the usual pairing's, but for 11.2.0. gpufleet never installs
# that driver.
RUNFILE_BUNDLED_DRIVERS: dict[str, str] = {**CUDA_RELEASE_MIN_DRIVER, "11.2.0": "460.27.04"}

# The toolkit alone: not the bundled driver (--driver), not the OpenGL libraries, man pages or
# the DRM module that come with it; --override skips the compiler check, which needs gcc.
RUNFILE_TOOLKIT_OPTIONS = (
    "--silent",
    "--toolkit",
    "--no-opengl-libs",
    "--no-man-page",
    "--no-drm",
    "--override",
)

# cuDNN 8's libraries: the front library and the six split ones it loads (each with the chain
# lib.so -> lib.so.8 -> lib.so.8.1.1 in the archive's lib64).
CUDNN8_LIBRARIES = (
    "libcudnn",
    "libcudnn_adv_infer",
    "libcudnn_adv_train",
    "libcudnn_cnn_infer",
    "libcudnn_cnn_train",
    "libcudnn_ops_infer",
    "libcudnn_ops_train",
)


class CudaInstallMethod(str, Enum):
    AUTO = "auto"
    APT = "apt"
    RUNFILE = "runfile"


class CudnnInstallMethod(str, Enum):
    AUTO = "auto"
    APT = "apt"
    ARCHIVE = "archive"


def runfile_name(package_version: str) -> str | None:
    """NVIDIA's runfile of a toolkit release, e.g. cuda_11.2.2_460.32.03_linux.run."""
    driver = RUNFILE_BUNDLED_DRIVERS.get(package_version)
    return f"cuda_{package_version}_{driver}_linux.run" if driver else None


def runfile_url(package_version: str) -> str | None:
    """Where NVIDIA publishes the runfile (None for a release gpufleet does not know)."""
    name = runfile_name(package_version)
    if name is None:
        return None
    return f"{NVIDIA_CUDA_DOWNLOAD_BASE}{package_version}/local_installers/{name}"


def cudnn_archive_name(cudnn_version: str, cuda_version: str) -> str:
    """The name NVIDIA gave cuDNN 8.1's archive, e.g. cudnn-11.2-linux-x64-v8.1.1.33.tgz."""
    return f"cudnn-{cuda_version}-linux-x64-v{cudnn_version}.tgz"


def toolkit_path(cuda_version: str) -> str:
    return f"/usr/local/cuda-{cuda_version}"


def cudart_soname(cuda_version: str) -> str:
    """libcudart.so.11.0 for every CUDA 11 release (the runtime's ABI is per major release)."""
    return f"libcudart.so.{cuda_version.split('.')[0]}.0"


def cudnn_library_links(cudnn_version: str) -> dict[str, str]:
    """
    The archive's library chain, link -> target, for a pin: libcudnn.so -> libcudnn.so.8,
    libcudnn.so.8 -> libcudnn.so.8.1.1, and the same for each split library.
    """
    pin = CudnnPin(cudnn_version)
    links = {}
    for library in CUDNN8_LIBRARIES:
        links[f"{library}.so"] = f"{library}.so.{pin.major}"
        links[f"{library}.so.{pin.major}"] = f"{library}.so.{pin.header_version}"
    return links


def cudnn_library_files(cudnn_version: str) -> list[str]:
    """The real files the chains end in, e.g. libcudnn.so.8.1.1."""
    pin = CudnnPin(cudnn_version)
    return [f"{library}.so.{pin.header_version}" for library in CUDNN8_LIBRARIES]


@dataclass(frozen=True)
class InstallMethods:
    """How the host gets the toolkit and cuDNN: each APT, or RUNFILE / ARCHIVE."""

    cuda: CudaInstallMethod
    cudnn: CudnnInstallMethod


@dataclass(frozen=True)
class AptCarries:
    """Whether the host's CUDA repository offers the pinned toolkit and cuDNN build."""

    cuda: bool
    cudnn: bool


def resolve_methods(
    cuda: CudaInstallMethod, cudnn: CudnnInstallMethod, carries: AptCarries
) -> InstallMethods:
    """``auto`` is apt where the repository offers the pin, else NVIDIA's other form."""
    if cuda is CudaInstallMethod.AUTO:
        cuda = CudaInstallMethod.APT if carries.cuda else CudaInstallMethod.RUNFILE
    if cudnn is CudnnInstallMethod.AUTO:
        cudnn = CudnnInstallMethod.APT if carries.cudnn else CudnnInstallMethod.ARCHIVE
    return InstallMethods(cuda, cudnn)


@dataclass(frozen=True)
class InstalledForms:
    """Which form of the pinned CUDA release and cuDNN the host has now."""

    apt_toolkit: bool  # cuda-toolkit-X-Y installed by dpkg
    runfile_toolkit: bool  # the toolkit folder holds the runfile's bin/cuda-uninstaller
    apt_cudnn: bool  # libcudnn8 installed by dpkg
    archive_cudnn: bool  # libcudnn* files in the toolkit's lib64


def switch_problems(
    methods: InstallMethods, installed: InstalledForms, cuda_version: str
) -> list[str]:
    """
    A method that would install a second copy of what another method installed: apt's and the
    runfile's toolkits share /usr/local/cuda-X.Y, and two cuDNNs on the loader path shadow each
    other. The user picks one and removes the other; gpufleet does not uninstall it for them.
    """
    path = toolkit_path(cuda_version)
    package = cuda_package_name(cuda_version)
    cudnn_packages = " ".join(CUDNN_PACKAGES)
    problems = []
    if methods.cuda is CudaInstallMethod.RUNFILE and installed.apt_toolkit:
        problems.append(
            f"cuda_install_method = 'runfile': CUDA {cuda_version} is installed from apt "
            f"({package}) in {path}; set cuda_install_method to 'apt', or remove it first "
            f"(apt-get purge {package} and its cuda-* dependencies)"
        )
    if methods.cuda is CudaInstallMethod.APT and installed.runfile_toolkit:
        problems.append(
            f"cuda_install_method = 'apt': CUDA {cuda_version} is installed in {path} by NVIDIA's "
            f"runfile; set cuda_install_method to 'runfile', or remove it first "
            f"({path}/bin/cuda-uninstaller)"
        )
    if methods.cudnn is CudnnInstallMethod.ARCHIVE and installed.apt_cudnn:
        problems.append(
            f"cudnn_install_method = 'archive': cuDNN is installed from apt ({CUDNN_PACKAGES[0]}); "
            "set cudnn_install_method to 'apt', or remove it first (apt-get purge "
            f"{cudnn_packages})"
        )
    if methods.cudnn is CudnnInstallMethod.APT and installed.archive_cudnn:
        problems.append(
            f"cudnn_install_method = 'apt': cuDNN is installed in {path}/lib64 from NVIDIA's "
            f"archive; set cudnn_install_method to 'archive', or remove it first "
            f"(rm {path}/include/cudnn*.h {path}/lib64/libcudnn*)"
        )
    return problems


# The artifacts, by the prefix of their data keys (<prefix>_url, <prefix>_sha256).
ARTIFACTS = ("cuda_runfile", "cudnn_archive", "tensorflow_image_archive")


def artifact_sources(
    package_version: str, given: dict[str, str | None]
) -> dict[str, tuple[str | None, str | None]]:
    """
    Per artifact, its URL and pinned sha256 from the data keys ``given``; the runfile's URL
    defaults to NVIDIA's for the toolkit release.
    """
    sources = {
        artifact: (given[f"{artifact}_url"], given[f"{artifact}_sha256"]) for artifact in ARTIFACTS
    }
    url, sha256 = sources["cuda_runfile"]
    sources["cuda_runfile"] = (url or runfile_url(package_version), sha256)
    return sources


def missing_artifact_keys(
    methods: InstallMethods, package_version: str, given: dict[str, str | None]
) -> list[str]:
    """
    The data keys to set: those of the artifacts the methods need that ``given`` (each
    artifact's _url and _sha256 key) lacks. An image archive is optional, but its URL and
    digest go together.
    """
    sources = artifact_sources(package_version, given)
    wanted = []
    if methods.cuda is CudaInstallMethod.RUNFILE:
        wanted.append(("cuda_runfile", f"CUDA {package_version} comes from NVIDIA's runfile here"))
    if methods.cudnn is CudnnInstallMethod.ARCHIVE:
        wanted.append(("cudnn_archive", "cuDNN comes from NVIDIA's tar archive here"))
    if any(sources["tensorflow_image_archive"]):
        wanted.append(("tensorflow_image_archive", "tensorflow_image comes from an archive"))
    problems = []
    for artifact, why in wanted:
        url, sha256 = sources[artifact]
        missing = [
            key
            for key, value in ((f"{artifact}_url", url), (f"{artifact}_sha256", sha256))
            if not value
        ]
        if missing:
            problems.append(
                f"{why}: set {' and '.join(missing)} (an artifact is fetched and used only "
                "with its pinned sha256)"
            )
    return problems


def runfile_toolkit_installed(
    version_json: str | None,
    nvcc_release: str | None,
    libraries: dict[str, str | None],
    package_version: str,
) -> bool:
    """
    Whether the runfile finished installing the release: version.json names it, nvcc reports
    its series and the runtime library is there. The runfile writes version.json before the
    libraries, so version.json alone may be an interrupted install's.
    """
    series = ".".join(package_version.split(".")[:2])
    return (
        version_json == package_version
        and nvcc_release == series
        and cudart_soname(series) in libraries
    )


def archive_cudnn_installed(
    header_version: str | None, libraries: dict[str, str | None], cudnn_version: str
) -> bool:
    """Whether the toolkit holds the pinned cuDNN's headers and its whole library chain."""
    return (
        header_version == CudnnPin(cudnn_version).header_version
        and all(
            libraries.get(link) == target
            for link, target in cudnn_library_links(cudnn_version).items()
        )
        and all(
            name in libraries and libraries[name] is None
            for name in cudnn_library_files(cudnn_version)
        )
    )
