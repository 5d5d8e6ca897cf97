"""Stand-in apt repositories for gpufleet's test hosts: NVIDIA's, and a subset of Debian's.

NVIDIA's repositories and a GPU cannot be reached from the test machines, so these are the only
NVIDIA packages gpufleet's tests install. They carry the real package names, versions and
dependency chains (testbed/standin_payloads and the catalogue below name the sources; what
the sources do not confirm is marked NOT FOUND) and install the files the real packages install,
with stand-in programs (nvidia-smi, nvcc, the container runtime and its hook) that print the real
formats. The Debian part mirrors what the hosts need from deb.debian.org (docker.io, dkms, ...)
so that the hosts need no other network. Every repository is flat and signed with a throwaway
key; apt on the hosts verifies it through signed-by, never trusted=yes.

The fleet serves ``RepoTree.root`` at http://10.213.0.1:8080/:

    keys/gpufleet-test.asc                          the archive key (armored)
    cuda/repos/ubuntu2004/x86_64/                   CUDA repository (drivers, toolkit, cuDNN, NCCL)
    libnvidia-container/gpgkey                      the archive key, at the real key's place
    libnvidia-container/stable/deb/nvidia-container-toolkit.list
    libnvidia-container/stable/deb/amd64/           container toolkit repository
    debian/<suite>/                                 Debian subset + linux-headers-$(uname -r)
"""

from __future__ import annotations

import hashlib
import os
import platform
import pwd
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import unquote

from testbed.rootfs import HOST_PACKAGES, locked

REPO_HOST = "10.213.0.1"
REPO_PORT = 8080
REPO_URL = f"http://{REPO_HOST}:{REPO_PORT}/"

KEY_FILE = "keys/gpufleet-test.asc"
CUDA_REPO_PATH = "cuda/repos/ubuntu2004/x86_64/"
CONTAINER_REPO_PATH = "libnvidia-container/stable/deb/amd64/"
DEBIAN_KEYRING_ON_HOST = "/usr/share/keyrings/gpufleet-test-archive.asc"

DEBIAN_UPSTREAM = "http://deb.debian.org/debian"
DEBIAN_UPSTREAM_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
PAYLOADS = Path(__file__).with_name("standin_payloads")
MAINTAINER = "gpufleet test stand-in <gpufleet-test@invalid>"
KEY_USER_ID = "gpufleet test archive (throwaway) <gpufleet-test@invalid>"


@dataclass(frozen=True)
class RepoTree:
    """A built tree of signed stand-in repositories and the key that signs them."""

    root: Path
    key_path: Path
    key_fingerprint: str

    def debian_source_line(self, suite: str) -> str:
        return f"deb [signed-by={DEBIAN_KEYRING_ON_HOST}] {REPO_URL}debian/{suite} /"

    def debian_keyring_path_on_host(self) -> str:
        return DEBIAN_KEYRING_ON_HOST

    @property
    def cuda_repo_url(self) -> str:
        return REPO_URL + CUDA_REPO_PATH

    @property
    def container_repo_url(self) -> str:
        return REPO_URL + CONTAINER_REPO_PATH

    @property
    def key_url(self) -> str:
        return REPO_URL + KEY_FILE


# --------------------------------------------------------------------------------------------
# Package model and .deb building
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class StandinPackage:
    """One binary package: control fields, files, symlinks and maintainer scripts."""

    name: str
    version: str
    description: str
    depends: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    breaks: tuple[str, ...] = ()
    replaces: tuple[str, ...] = ()
    architecture: str = "amd64"
    files: dict[str, Payload] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)
    scripts: dict[str, str] = field(default_factory=dict)
    # Shared libraries get the ldconfig trigger that debhelper adds to real library packages.
    runs_ldconfig: bool = False

    @property
    def deb_name(self) -> str:
        return f"{self.name}_{self.version.split(':')[-1]}_{self.architecture}.deb"

    def control(self) -> str:
        fields = {
            "Package": self.name,
            "Version": self.version,
            "Architecture": self.architecture,
            "Maintainer": MAINTAINER,
            "Priority": "optional",
            "Depends": ", ".join(self.depends),
            "Provides": ", ".join(self.provides),
            "Breaks": ", ".join(self.breaks),
            "Replaces": ", ".join(self.replaces),
        }
        lines = [f"{name}: {value}" for name, value in fields.items() if value]
        lines.append(f"Description: {self.description}")
        lines.append(" gpufleet test stand-in: installs the paths of the real package only.")
        return "\n".join(lines) + "\n"


def render(template: str, **values: str) -> str:
    """Fill the @NAME@ placeholders of a payload (the convention of .in files in packaging)."""
    for name, value in values.items():
        template = template.replace(f"@{name}@", value)
    leftover = re.search(r"@[A-Z_]+@", template)
    if leftover:
        raise ValueError(f"payload placeholder {leftover.group()} has no value")
    return template


def payload_text(name: str, **values: str) -> str:
    return render((PAYLOADS / name).read_text(), **values)


def program(name: str, **values: str) -> Payload:
    return Payload(payload_text(name, **values).encode(), 0o755)


def text_file(content: str) -> Payload:
    return Payload(content.encode())


@cache
def shared_library(soname: str, version: str) -> bytes:
    """A real ELF shared object with ``soname`` (gcc), so ldconfig links and resolves it."""
    scratch = Path(os.environ.get("TMPDIR", "/tmp"))
    output = scratch / f"gpufleet-standin-{os.getpid()}-{soname}-{version}.so"
    try:
        run_command([
            "gcc", "-shared", "-fPIC", "-O0", f"-Wl,-soname,{soname}",
            f'-DSTANDIN_VERSION="{version}"', "-o", str(output),
            str(PAYLOADS / "stub_library.c"),
        ])  # fmt: skip
        return output.read_bytes()
    finally:
        output.unlink(missing_ok=True)


def library_files(directory: str, soname: str, real_name: str, version: str) -> dict[str, Payload]:
    return {f"{directory}/{real_name}": Payload(shared_library(soname, version))}


def build_deb(package: StandinPackage, output_dir: Path, scratch: Path) -> Path:
    root = scratch / f"{package.name}_{package.version}"
    for path, payload in package.files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(payload.content)
        target.chmod(payload.mode)
    for path, destination in package.symlinks.items():
        link = root / path.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(destination)
    control_dir = root / "DEBIAN"
    control_dir.mkdir(parents=True, exist_ok=True)
    (control_dir / "control").write_text(package.control())
    for script, content in package.scripts.items():
        (control_dir / script).write_text(content)
        (control_dir / script).chmod(0o755)
    if package.runs_ldconfig:
        (control_dir / "triggers").write_text("activate-noawait ldconfig\n")
    deb = output_dir / package.deb_name
    run_command(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(root), str(deb)])
    shutil.rmtree(root)
    return deb


def build_debs(packages: Iterable[StandinPackage], output_dir: Path, scratch: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for future in [pool.submit(build_deb, p, output_dir, scratch) for p in packages]:
            future.result()


# --------------------------------------------------------------------------------------------
# The NVIDIA catalogue (repo-packages.md of shared/nvidia-reference is the source)
# --------------------------------------------------------------------------------------------

# cuda-drivers-<branch> builds of the ubuntu2004 CUDA repo (apt-cache policy listing, §3).
DRIVER_RELEASES: dict[str, tuple[str, ...]] = {
    "470": ("470.141.03", "470.182.03", "470.239.06"),
    "535": ("535.183.01",),
}
# CUDA version nvidia-smi reports per branch (real 470 tables: 11.4; 535 header: 12.2).
DRIVER_CUDA_VERSION = {"470": "11.4", "535": "12.2"}
# The (>=) floors of nvidia-driver/nvidia-dkms on nvidia-dkms and nvidia-kernel-common
# (470: Canonical's control file). 535: NOT FOUND; 535.54.03, the branch's first release, chosen.
DRIVER_DEPENDENCY_FLOOR = {"470": "470.129.06", "535": "535.54.03"}
# NvIFR (libnvidia-ifr1) is in the 470 control file; R495+ dropped it (NOT FOUND for 535's
# control file, chosen from the driver's removal of NvIFR).
BRANCHES_WITH_IFR = {"470"}
DRIVER_REVISION = "1"  # CUDA-repo driver builds end in -1 (repo-packages.md §3)


def driver_packages(branch: str, upstream: str) -> list[StandinPackage]:
    """The nvidia-driver-<branch> family at one driver release, shaped as Canonical's control."""
    version = f"{upstream}-{DRIVER_REVISION}"
    floor = DRIVER_DEPENDENCY_FLOOR[branch]
    cuda = DRIVER_CUDA_VERSION[branch]
    lib_dir = "/usr/lib/x86_64-linux-gnu"

    def own(name: str) -> str:
        return f"{name}-{branch}"

    def exact(name: str) -> str:
        return f"{own(name)} (= {version})"

    def at_least(name: str, minimum: str = upstream) -> str:
        return f"{own(name)} (>= {minimum})"

    def package(name: str, description: str, **fields: object) -> StandinPackage:
        return StandinPackage(own(name), version, description, **fields)  # type: ignore[arg-type]

    src_dir = f"/usr/src/nvidia-{upstream}"
    kernel_source = {
        f"{src_dir}/Makefile": text_file((PAYLOADS / "nvidia-kernel/Makefile").read_text()),
        f"{src_dir}/nvidia-standin.c": text_file(
            payload_text("nvidia-kernel/nvidia-standin.c", DRIVER_VERSION=upstream)
        ),
    }
    with_ifr = branch in BRANCHES_WITH_IFR
    driver_depends = [
        exact("libnvidia-gl"),
        at_least("nvidia-dkms", floor),
        at_least("nvidia-kernel-common", floor),
        exact("nvidia-kernel-source"),
        exact("libnvidia-compute"),
        exact("libnvidia-extra"),
        exact("nvidia-compute-utils"),
        exact("libnvidia-decode"),
        exact("libnvidia-encode"),
        exact("nvidia-utils"),
        exact("xserver-xorg-video-nvidia"),
        exact("libnvidia-cfg1"),
        *([exact("libnvidia-ifr1")] if with_ifr else []),
        exact("libnvidia-fbc1"),
    ]
    packages = [
        package("libnvidia-common", "NVIDIA driver common files", architecture="all"),
        package(
            "libnvidia-gl",
            "NVIDIA OpenGL/GLX/EGL/GLES libraries",
            depends=(own("libnvidia-common"),),
        ),
        package(
            "libnvidia-compute",
            "NVIDIA libcompute package",
            provides=(
                "libnvidia-compute",
                "nvidia-opencl-icd",
                "opencl-icd",
                f"libnvidia-ml1 (= {version})",
                "libcuda-11.2-1",
                f"libcuda1 (= {version})",
            ),
            files={
                **library_files(lib_dir, "libcuda.so.1", f"libcuda.so.{upstream}", upstream),
                **library_files(
                    lib_dir, "libnvidia-ml.so.1", f"libnvidia-ml.so.{upstream}", upstream
                ),
            },
            symlinks={
                f"{lib_dir}/libcuda.so.1": f"libcuda.so.{upstream}",
                f"{lib_dir}/libnvidia-ml.so.1": f"libnvidia-ml.so.{upstream}",
            },
            runs_ldconfig=True,
        ),
        package("libnvidia-extra", "Extra libraries for the NVIDIA driver"),
        package(
            "libnvidia-decode",
            "NVIDIA Video Decoding runtime libraries",
            depends=(exact("libnvidia-compute"),),
        ),
        package(
            "libnvidia-encode",
            "NVENC Video Encoding runtime library",
            depends=(exact("libnvidia-compute"),),
        ),
        package("libnvidia-cfg1", "NVIDIA binary OpenGL/GLX configuration library"),
        package("libnvidia-fbc1", "NVIDIA OpenGL-based Framebuffer Capture runtime library"),
        # ${nvidia:xorgDepends} (the X server ABI) is not resolved in the sources: NOT FOUND,
        # left out so the headless test hosts need no X server.
        package(
            "xserver-xorg-video-nvidia",
            "NVIDIA binary Xorg driver",
            depends=(exact("libnvidia-cfg1"),),
        ),
        package(
            "nvidia-utils",
            "NVIDIA driver support binaries",
            provides=("nvidia-utils", "nvidia-smi"),
            files={
                "/usr/bin/nvidia-smi": program(
                    "nvidia-smi", DRIVER_VERSION=upstream, CUDA_VERSION=cuda
                )
            },
        ),
        package(
            "nvidia-compute-utils",
            "NVIDIA compute utilities",
            depends=(own("libnvidia-compute"), "adduser"),
            provides=("nvidia-compute-utils", "nvidia-persistenced"),
            files={
                "/usr/bin/nvidia-persistenced": program(
                    "nvidia-persistenced", DRIVER_VERSION=upstream
                ),
                "/lib/systemd/system/nvidia-persistenced.service": text_file(
                    payload_text("nvidia-persistenced.service")
                ),
            },
            scripts={"postinst": payload_text("nvidia-compute-utils.postinst")},
        ),
        package(
            "nvidia-kernel-source",
            "NVIDIA kernel source package",
            provides=("nvidia-kernel-source",),
            files=kernel_source,
        ),
        package(
            "nvidia-kernel-common",
            "Shared files used with the kernel module",
            provides=("nvidia-kernel-common",),
        ),
        package(
            "nvidia-dkms",
            "NVIDIA DKMS package",
            depends=(
                "dkms",
                at_least("nvidia-kernel-source", floor),
                at_least("nvidia-kernel-common", floor),
            ),
            provides=("nvidia-dkms-kernel",),
            files={
                f"{src_dir}/dkms.conf": text_file(
                    payload_text("nvidia-kernel/dkms.conf", DRIVER_VERSION=upstream)
                )
            },
            scripts={
                "postinst": payload_text("nvidia-dkms.postinst", DRIVER_VERSION=upstream),
                "prerm": payload_text("nvidia-dkms.prerm", DRIVER_VERSION=upstream),
            },
        ),
        package("nvidia-driver", "NVIDIA driver metapackage", depends=tuple(driver_depends)),
        package(
            "nvidia-headless-no-dkms",
            "NVIDIA headless metapackage - no DKMS",
            depends=(
                at_least("nvidia-kernel-common", floor),
                exact("nvidia-kernel-source"),
                exact("libnvidia-compute"),
                exact("nvidia-compute-utils"),
                exact("libnvidia-cfg1"),
            ),
        ),
        package(
            "nvidia-headless",
            "NVIDIA headless metapackage",
            depends=(own("nvidia-headless-no-dkms"), own("nvidia-dkms")),
        ),
    ]
    if with_ifr:
        packages.append(
            package(
                "libnvidia-ifr1",
                "NVIDIA OpenGL-based Inband Frame Readback",
                depends=(own("libnvidia-gl"), "libx11-6"),
            )
        )
    # cuda-drivers-<branch>: (>=) on the driver packages (dstack PR #2355, 535), so pinning it
    # pins nothing under it; cuda-drivers follows the newest branch (the NOT FOUND shape of
    # repo-packages.md §3: one cuda-drivers per driver release, depending on its branch).
    cuda_drivers_depends = [
        at_least(name)
        for name in (
            "libnvidia-common",
            "libnvidia-gl",
            "libnvidia-compute",
            "libnvidia-decode",
            "libnvidia-encode",
            "libnvidia-fbc1",
            "libnvidia-extra",
            "nvidia-driver",
            "xserver-xorg-video-nvidia",
            "nvidia-utils",
            "nvidia-compute-utils",
        )
    ]
    if with_ifr:
        cuda_drivers_depends.append(at_least("libnvidia-ifr1"))
    packages.append(
        package(
            "cuda-drivers", "CUDA Driver native dependencies", depends=tuple(cuda_drivers_depends)
        )
    )
    packages.append(
        StandinPackage(
            "cuda-drivers", version, "CUDA Driver meta-package", depends=(at_least("cuda-drivers"),)
        )
    )
    return packages


@dataclass(frozen=True)
class ToolkitRelease:
    """One CUDA toolkit release: meta-packages carry `release`, components their own versions."""

    release: str
    cudart: str
    nvcc: str
    cublas: str
    driver_floor: str  # cuda-runtime-X-Y -> cuda-drivers (>= the driver bundled with it)
    nvcc_built_on: str
    nvcc_build: str
    copyright_year: str

    @property
    def series(self) -> str:  # "11.2"
        return ".".join(self.release.split(".")[:2])

    @property
    def dashed(self) -> str:  # "11-2"
        return self.series.replace(".", "-")

    @property
    def major(self) -> str:
        return self.release.split(".")[0]


TOOLKIT_RELEASES = (
    # 11.2.0: component versions and nvcc banner NOT FOUND (CUDA 11.2.0 release values, chosen).
    ToolkitRelease(
        "11.2.0",
        "11.2.72",
        "11.2.67",
        "11.3.1.68",
        "460.27.04",
        "Mon_Nov_30_19:08:53_PST_2020",
        "cuda_11.2.r11.2/compiler.29373293_0",
        "2020",
    ),
    # 11.2.1: cudart 11.2.146 (nvidia/cuda 11.2.1 Dockerfile); nvcc, cuBLAS, banner NOT FOUND.
    ToolkitRelease(
        "11.2.1",
        "11.2.146",
        "11.2.142",
        "11.4.1.1026",
        "460.32.03",
        "Thu_Jan_28_19:32:09_PST_2021",
        "cuda_11.2.r11.2/compiler.29558016_0",
        "2021",
    ),
    # 11.2.2: all values real (nvidia/cuda 11.2.2 Dockerfiles, nvcc-version.txt).
    ToolkitRelease(
        "11.2.2",
        "11.2.152",
        "11.2.152",
        "11.4.1.1043",
        "460.32.03",
        "Sun_Feb_14_21:12:58_PST_2021",
        "cuda_11.2.r11.2/compiler.29618528_0",
        "2021",
    ),
    # 12.2.2 (the newer toolkit, driver 535.104.05): component versions and banner NOT FOUND.
    ToolkitRelease(
        "12.2.2",
        "12.2.140",
        "12.2.140",
        "12.2.5.6",
        "535.104.05",
        "Tue_Aug_15_22:02:13_PDT_2023",
        "cuda_12.2.r12.2/compiler.33191640_0",
        "2023",
    ),
)


def toolkit_packages(toolkit: ToolkitRelease) -> list[StandinPackage]:
    """cuda-X-Y -> cuda-runtime-X-Y -> cuda-drivers (the trap), and cuda-toolkit-X-Y without it.

    The exact Depends of the meta-packages are NOT FOUND: the shape (>= component) follows the
    cuda-10-1 apt error quoted in repo-packages.md §1, with a few real component names.
    """
    version = f"{toolkit.release}-1"
    dashed = toolkit.dashed
    prefix = f"/usr/local/cuda-{toolkit.series}"
    lib_dir = f"{prefix}/targets/x86_64-linux/lib"
    cudart_soname = f"libcudart.so.{toolkit.major}.0"
    cublas_soname = f"libcublas.so.{toolkit.major}"
    config_scripts = {
        script: payload_text(
            f"cuda-toolkit-config.{script}",
            CUDA_RELEASE=toolkit.series,
            CUDA_MAJOR=toolkit.major,
            PRIORITY=toolkit.series.replace(".", ""),
        )
        for script in ("postinst", "prerm")
    }
    cudart = StandinPackage(
        f"cuda-cudart-{dashed}",
        f"{toolkit.cudart}-1",
        "CUDA Runtime native Libraries",
        files=library_files(
            lib_dir, cudart_soname, f"libcudart.so.{toolkit.cudart}", toolkit.cudart
        ),
        symlinks={f"{lib_dir}/{cudart_soname}": f"libcudart.so.{toolkit.cudart}"},
        depends=(
            f"cuda-toolkit-{dashed}-config-common",
            f"cuda-toolkit-{toolkit.major}-config-common",
            "cuda-toolkit-config-common",
        ),
        runs_ldconfig=True,
    )
    cublas = StandinPackage(
        f"libcublas-{dashed}",
        f"{toolkit.cublas}-1",
        "CUBLAS native runtime libraries",
        files=library_files(
            lib_dir, cublas_soname, f"libcublas.so.{toolkit.cublas}", toolkit.cublas
        ),
        symlinks={f"{lib_dir}/{cublas_soname}": f"libcublas.so.{toolkit.cublas}"},
        runs_ldconfig=True,
    )
    nvcc = StandinPackage(
        f"cuda-nvcc-{dashed}",
        f"{toolkit.nvcc}-1",
        "CUDA nvcc",
        files={
            f"{prefix}/bin/nvcc": program(
                "nvcc",
                CUDA_SERIES=dashed,
                CUDA_RELEASE=toolkit.series,
                NVCC_VERSION=toolkit.nvcc,
                BUILT_ON=toolkit.nvcc_built_on,
                BUILD_TAG=toolkit.nvcc_build,
                COPYRIGHT_YEAR=toolkit.copyright_year,
            )
        },
    )
    config_common = StandinPackage(
        f"cuda-toolkit-{dashed}-config-common",
        f"{toolkit.cudart}-1",
        "Common config package for CUDA Toolkit",
        architecture="all",
        scripts=config_scripts,
    )
    major_config = StandinPackage(
        f"cuda-toolkit-{toolkit.major}-config-common",
        f"{toolkit.cudart}-1",
        "Common config package for CUDA Toolkit",
        architecture="all",
        files={
            f"/etc/ld.so.conf.d/988_cuda-{toolkit.major}.conf": text_file(
                f"/usr/local/cuda-{toolkit.major}/targets/x86_64-linux/lib\n"
            )
        },
    )
    shared_config = StandinPackage(
        "cuda-toolkit-config-common",
        f"{toolkit.cudart}-1",
        "Common config package for CUDA Toolkit",
        architecture="all",
        files={
            "/etc/ld.so.conf.d/000_cuda.conf": text_file(
                "/usr/local/cuda/targets/x86_64-linux/lib\n"
            )
        },
    )
    libraries = StandinPackage(
        f"cuda-libraries-{dashed}",
        version,
        "CUDA Libraries meta-package",
        depends=(f"{cudart.name} (>= {toolkit.cudart})", f"{cublas.name} (>= {toolkit.cublas})"),
    )
    toolkit_meta = StandinPackage(
        f"cuda-toolkit-{dashed}",
        version,
        "CUDA Toolkit meta-package",
        depends=(
            f"{nvcc.name} (>= {toolkit.nvcc})",
            f"{cudart.name} (>= {toolkit.cudart})",
            f"{cublas.name} (>= {toolkit.cublas})",
            f"{config_common.name} (>= {toolkit.cudart})",
            major_config.name,
            shared_config.name,
            f"{libraries.name} (>= {toolkit.release})",
        ),
    )
    runtime = StandinPackage(
        f"cuda-runtime-{dashed}",
        version,
        "CUDA Runtime meta-package",
        depends=(
            f"{libraries.name} (>= {toolkit.release})",
            f"cuda-drivers (>= {toolkit.driver_floor})",
        ),
    )
    everything = StandinPackage(
        f"cuda-{dashed}",
        version,
        "CUDA meta-package",
        depends=(
            f"{runtime.name} (>= {toolkit.release})",
            f"{toolkit_meta.name} (>= {toolkit.release})",
        ),
    )
    return [
        cudart,
        cublas,
        nvcc,
        config_common,
        major_config,
        shared_config,
        libraries,
        toolkit_meta,
        runtime,
        everything,
    ]


# libcudnn8 builds (repo-packages.md §2): the 8.1 pins of TensorFlow and nvidia/cuda, and the
# newest build, which an unpinned install picks.
CUDNN_BUILDS = (("8.1.0.77", "11.2"), ("8.1.1.33", "11.2"), ("8.9.7.29", "12.2"))
# libnccl2: the 11.2 pin is real; the cuda12.2 build (2.18.5) is NOT FOUND, chosen as the newest.
NCCL_BUILDS = (("2.8.4", "11.2"), ("2.18.5", "12.2"))

CUDNN_VERSION_HEADER = """\
/* cudnn_version.h of cuDNN @MAJOR@.@MINOR@.@PATCH@ (gpufleet stand-in; the defines as real). */
#ifndef CUDNN_VERSION_H
#define CUDNN_VERSION_H

#define CUDNN_MAJOR @MAJOR@
#define CUDNN_MINOR @MINOR@
#define CUDNN_PATCHLEVEL @PATCH@

#define CUDNN_VERSION (CUDNN_MAJOR * 1000 + CUDNN_MINOR * 100 + CUDNN_PATCHLEVEL)

#endif /* CUDNN_VERSION_H */
"""


def cudnn_packages(build: str, cuda: str) -> list[StandinPackage]:
    version = f"{build}-1+cuda{cuda}"
    major, minor, patch = build.split(".")[:3]
    lib_dir = "/usr/lib/x86_64-linux-gnu"
    include_dir = "/usr/include/x86_64-linux-gnu"
    real_name = f"libcudnn.so.{major}.{minor}.{patch}"
    runtime = StandinPackage(
        f"libcudnn{major}",
        version,
        "cuDNN runtime libraries",
        files=library_files(lib_dir, f"libcudnn.so.{major}", real_name, build),
        symlinks={f"{lib_dir}/libcudnn.so.{major}": real_name},
        runs_ldconfig=True,
    )
    development = StandinPackage(
        f"libcudnn{major}-dev",
        version,
        "cuDNN development libraries and headers",
        depends=(f"{runtime.name} (= {version})",),
        files={
            f"{include_dir}/cudnn_version_v{major}.h": text_file(
                render(CUDNN_VERSION_HEADER, MAJOR=major, MINOR=minor, PATCH=patch)
            ),
            f"{include_dir}/cudnn_v{major}.h": text_file('#include "cudnn_version.h"\n'),
        },
        scripts={
            script: payload_text(f"libcudnn8-dev.{script}") for script in ("postinst", "prerm")
        },
    )
    return [runtime, development]


def nccl_package(build: str, cuda: str) -> StandinPackage:
    lib_dir = "/usr/lib/x86_64-linux-gnu"
    return StandinPackage(
        "libnccl2",
        f"{build}-1+cuda{cuda}",
        "NVIDIA Collective Communication Library (NCCL)",
        files=library_files(lib_dir, "libnccl.so.2", f"libnccl.so.{build}", build),
        symlinks={f"{lib_dir}/libnccl.so.2": f"libnccl.so.{build}"},
        runs_ldconfig=True,
    )


CONTAINER_TOOLKIT_VERSIONS = ("1.13.5", "1.17.4", "1.17.8")
# The 1.13.5 commit is real (docker/for-linux#1531); the others are NOT FOUND and derived.
CONTAINER_TOOLKIT_COMMITS = {"1.13.5": "6b8589dcb4dead72ab64f14a5912886e6165c079"}


def container_packages(upstream: str) -> list[StandinPackage]:
    """NVIDIA/nvidia-container-toolkit packaging/debian/control and libnvidia-container's."""
    version = f"{upstream}-1"
    commit = CONTAINER_TOOLKIT_COMMITS.get(
        upstream, hashlib.sha1(f"nvidia-container-toolkit {upstream}".encode()).hexdigest()
    )
    lib_dir = "/usr/lib/x86_64-linux-gnu"
    values = {"VERSION": upstream, "COMMIT": commit}
    legacy = ("nvidia-container-runtime (<= 3.5.0-1)", "nvidia-container-runtime-hook")
    library = StandinPackage(
        "libnvidia-container1",
        version,
        "NVIDIA container runtime library",
        files=library_files(
            lib_dir, "libnvidia-container.so.1", f"libnvidia-container.so.{upstream}", upstream
        ),
        symlinks={f"{lib_dir}/libnvidia-container.so.1": f"libnvidia-container.so.{upstream}"},
        runs_ldconfig=True,
    )
    tools = StandinPackage(
        "libnvidia-container-tools",
        version,
        "NVIDIA container runtime library (command-line tools)",
        # ${shlibs:Depends} resolved as dpkg-shlibdeps would (exact line NOT FOUND).
        depends=(f"libnvidia-container1 (>= {version})",),
        files={"/usr/bin/nvidia-container-cli": program("nvidia-container-cli", **values)},
    )
    base = StandinPackage(
        "nvidia-container-toolkit-base",
        version,
        "NVIDIA Container Toolkit Base",
        breaks=(*legacy, "nvidia-container-toolkit (<= 1.10.0-1)"),
        replaces=legacy,
        files={
            "/usr/bin/nvidia-container-runtime": program("nvidia-container-runtime", **values),
            "/usr/bin/nvidia-ctk": program("nvidia-ctk", **values),
        },
    )
    seccomp = ("libseccomp2",) if upstream.startswith("1.13.") else ()
    toolkit = StandinPackage(
        "nvidia-container-toolkit",
        version,
        "NVIDIA Container toolkit",
        depends=(
            f"nvidia-container-toolkit-base (= {version})",
            f"libnvidia-container-tools (>= {version})",
            "libnvidia-container-tools (<< 2.0.0)",
            *seccomp,
        ),
        breaks=legacy,
        replaces=legacy,
        files={
            "/usr/bin/nvidia-container-runtime-hook": program(
                "nvidia-container-runtime-hook", **values
            )
        },
    )
    return [library, tools, base, toolkit]


def cuda_repo_packages() -> list[StandinPackage]:
    packages = [
        p
        for b, releases in DRIVER_RELEASES.items()
        for u in releases
        for p in driver_packages(b, u)
    ]
    packages += [p for toolkit in TOOLKIT_RELEASES for p in toolkit_packages(toolkit)]
    packages += [p for build, cuda in CUDNN_BUILDS for p in cudnn_packages(build, cuda)]
    packages += [nccl_package(build, cuda) for build, cuda in NCCL_BUILDS]
    return unique_packages(packages)


def container_repo_packages() -> list[StandinPackage]:
    return [p for upstream in CONTAINER_TOOLKIT_VERSIONS for p in container_packages(upstream)]


def unique_packages(packages: list[StandinPackage]) -> list[StandinPackage]:
    """Drop repeats of one name=version (config packages shared by several toolkit releases)."""
    seen: dict[tuple[str, str], StandinPackage] = {}
    for package in packages:
        seen.setdefault((package.name, package.version), package)
    return list(seen.values())


def external_dependencies(packages: list[StandinPackage]) -> list[str]:
    """Names the stand-ins depend on that Debian must provide (dkms, adduser, libx11-6, ...)."""
    own = {p.name for p in packages} | {
        provided.split()[0] for p in packages for provided in p.provides
    }
    names = {d.split()[0] for p in packages for d in p.depends}
    return sorted(names - own)


def linux_headers_package(release: str) -> StandinPackage:
    """Headers of the running kernel (the hosts share it): what DKMS looks for, nothing more."""
    numeric = re.match(r"[0-9]+(\.[0-9]+)*", release)
    if numeric is None:
        raise ValueError(f"kernel release {release!r} does not start with a version")
    headers = f"/usr/src/linux-headers-{release}"
    return StandinPackage(
        f"linux-headers-{release}",
        f"{numeric.group()}-1",
        f"Header files for Linux {release} (stand-in for the running kernel's)",
        files={
            f"{headers}/Makefile": text_file(
                f"# gpufleet stand-in headers of Linux {release}\n"
                f"KERNELRELEASE = {release}\nkernelrelease:\n\t@echo $(KERNELRELEASE)\n"
            ),
            f"{headers}/.config": text_file("CONFIG_MODULES=y\n# CONFIG_MODULE_SIG is not set\n"),
            f"{headers}/include/config/kernel.release": text_file(f"{release}\n"),
            f"{headers}/include/generated/utsrelease.h": text_file(
                f'#define UTS_RELEASE "{release}"\n'
            ),
        },
        symlinks={f"/lib/modules/{release}/build": headers},
    )


# --------------------------------------------------------------------------------------------
# apt in a private directory, signing, indexing
# --------------------------------------------------------------------------------------------


def run_command(
    command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> str:
    """Run ``command``; return its stdout or raise with its output."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result.stdout


class PrivateApt:
    """apt-get with its own sources, preferences, state and cache under ``base``.

    Nothing of the machine's apt configuration, keys or dpkg status is used: the status is
    empty, so apt resolves the full closure of what it is asked to install.
    """

    def __init__(
        self, base: Path, sources: list[str], preferences: str = "", archives: Path | None = None
    ) -> None:
        self.base = base
        empty = base / "empty"
        state = base / "state"
        self.archives = archives or base / "cache" / "archives"
        for directory in (
            empty,
            state / "lists" / "partial",
            self.archives / "partial",
            base / "cache",
            base / "log",
        ):
            directory.mkdir(parents=True, exist_ok=True)
        (state / "status").touch()
        (base / "sources.list").write_text("".join(f"{line}\n" for line in sources))
        (base / "preferences").write_text(preferences)
        options = {
            "Dir::Etc::main": "/dev/null",
            "Dir::Etc::parts": str(empty),
            "Dir::Etc::sourcelist": str(base / "sources.list"),
            "Dir::Etc::sourceparts": str(empty),
            "Dir::Etc::preferences": str(base / "preferences"),
            "Dir::Etc::preferencesparts": str(empty),
            "Dir::Etc::trusted": str(empty / "trusted.gpg"),
            "Dir::Etc::trustedparts": str(empty),
            "Dir::State": str(state),
            "Dir::State::status": str(state / "status"),
            "Dir::Cache": str(base / "cache"),
            "Dir::Cache::archives": str(self.archives),
            "Dir::Log": str(base / "log"),
            "APT::Architecture": "amd64",
            "Acquire::Languages": "none",
            "Debug::NoLocking": "true",
            # Downloads run as the calling user, who owns these directories.
            "APT::Sandbox::User": pwd.getpwuid(os.getuid()).pw_name,
        }
        config = "".join(f'{name} "{value}";\n' for name, value in options.items())
        config += 'APT::Architectures { "amd64"; };\n'
        (base / "apt.conf").write_text(config)
        self.env = {**os.environ, "APT_CONFIG": str(base / "apt.conf"), "LC_ALL": "C.UTF-8"}

    def run(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["apt-get", *arguments], env=self.env, capture_output=True, text=True, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"apt-get {' '.join(arguments)} failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        return result

    def simulate_install(self, *packages: str) -> dict[str, str]:
        """Package -> version that `apt-get install` of ``packages`` would unpack."""
        output = self.run("install", "--simulate", "--quiet", *packages).stdout
        return dict(re.findall(r"^Inst (\S+) \((\S+) ", output, re.MULTILINE))

    def download_uris(self, *packages: str) -> dict[str, str]:
        """Archive file name -> URL of every package an install of ``packages`` needs."""
        # apt lists only what its archive directory lacks: ask with an empty one.
        nothing_cached = self.base / "no-archives"
        (nothing_cached / "partial").mkdir(parents=True, exist_ok=True)
        output = self.run(
            "install", "--print-uris", "--quiet", "--quiet",
            "-o", f"Dir::Cache::archives={nothing_cached}", *packages,
        ).stdout  # fmt: skip
        return {name: url for url, name in re.findall(r"^'(\S+)' (\S+) ", output, re.MULTILINE)}


class ArchiveKey:
    """The throwaway signing key, in a private GNUPGHOME kept with the cache."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.public_key = home / "gpufleet-test.asc"
        self.fingerprint_file = home / "fingerprint"

    @property
    def fingerprint(self) -> str | None:
        if not self.fingerprint_file.exists():
            return None
        return self.fingerprint_file.read_text().strip()

    def gpg(self, *arguments: str) -> str:
        return run_command(["gpg", "--homedir", str(self.home), "--batch", "--yes", *arguments])

    def ensure(self) -> str:
        """Generate the key unless it exists; return its fingerprint."""
        existing = self.fingerprint
        if existing is not None:
            return existing
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True, mode=0o700)
        try:
            self.gpg(
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--quick-gen-key",
                KEY_USER_ID,
                "ed25519",
                "sign",
                "never",
            )
            listing = self.gpg("--with-colons", "--list-secret-keys")
            fingerprint = re.findall(r"^fpr:+([0-9A-F]{40}):", listing, re.MULTILINE)[0]
            self.public_key.write_text(self.gpg("--armor", "--export", fingerprint))
        finally:
            self.stop_agent()
        self.fingerprint_file.write_text(fingerprint + "\n")
        return fingerprint

    def sign_release(self, repo: Path) -> None:
        fingerprint = self.ensure()
        release = str(repo / "Release")
        self.gpg("--local-user", fingerprint, "--clearsign", "-o", str(repo / "InRelease"), release)
        self.gpg(
            "--local-user",
            fingerprint,
            "--armor",
            "--detach-sign",
            "-o",
            str(repo / "Release.gpg"),
            release,
        )

    def stop_agent(self) -> None:
        subprocess.run(
            ["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"],
            capture_output=True,
            check=False,
        )


def index_flat_repo(repo: Path, key: ArchiveKey, release_fields: dict[str, str]) -> None:
    """Packages(.gz), Release, InRelease and Release.gpg for a flat (`deb URL /`) repository."""
    packages = run_command(["apt-ftparchive", "packages", "."], cwd=repo)
    (repo / "Packages").write_text(packages)
    run_command(["gzip", "-9", "--keep", "--force", "--no-name", str(repo / "Packages")])
    options = [
        f"-oAPT::FTPArchive::Release::{name}={value}" for name, value in release_fields.items()
    ]
    release = run_command(["apt-ftparchive", *options, "release", "."], cwd=repo)
    (repo / "Release").write_text(release)
    key.sign_release(repo)


# --------------------------------------------------------------------------------------------
# Building and caching
# --------------------------------------------------------------------------------------------


def sources_digest(*extra: str) -> str:
    """Digest of this module, its payloads and ``extra``: a cache key that changes with them."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for path in sorted(PAYLOADS.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(PAYLOADS)).encode())
            digest.update(path.read_bytes())
    digest.update(repr(extra).encode())
    return digest.hexdigest()[:16]


def cached_build(target: Path, build: Callable[[Path], None]) -> Path:
    """Build ``target`` through a temporary sibling renamed into place (atomic), unless present.

    Callers hold the cache lock.
    """
    if target.exists():
        return target
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        build(temporary)
        temporary.rename(target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


def build_nvidia_part(part: Path, key: ArchiveKey) -> None:
    cuda = part / CUDA_REPO_PATH
    container = part / CONTAINER_REPO_PATH
    build_debs(cuda_repo_packages(), cuda, part / ".scratch")
    build_debs(container_repo_packages(), container, part / ".scratch")
    shutil.rmtree(part / ".scratch")
    # The Release label users pin with (`Pin: release l=NVIDIA CUDA`, repo-packages.md §0).
    index_flat_repo(cuda, key, {"Origin": "NVIDIA", "Label": "NVIDIA CUDA"})
    index_flat_repo(container, key, {"Origin": "NVIDIA", "Label": "libnvidia-container"})
    (part / "libnvidia-container" / "gpgkey").write_bytes(key.public_key.read_bytes())
    # The list file NVIDIA's install guide downloads, pointing at this mirror.
    (part / "libnvidia-container/stable/deb/nvidia-container-toolkit.list").write_text(
        "deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] "
        f"{REPO_URL}libnvidia-container/stable/deb/$(ARCH) /\n"
    )


def debian_seed_packages() -> list[str]:
    """What the Debian subset must hold, with everything these depend on or recommend."""
    standins = cuda_repo_packages() + container_repo_packages()
    return [
        # The host's own base (so versions the stand-ins pull stay consistent with it).
        "?essential",
        "?priority(required)",
        *HOST_PACKAGES,
        "docker.io",
        "dkms",
        *external_dependencies(standins),
    ]


# Kernel images and headers are not mirrored: the hosts share the machine's kernel and get the
# stand-in headers package instead (so dkms's Recommends on linux-headers-* stay unmet).
NO_KERNEL_PACKAGES = """\
Package: linux-image-* linux-headers-*
Pin: release *
Pin-Priority: -1
"""


def build_debian_part(suite: str, part: Path, key: ArchiveKey, downloads: Path) -> None:
    apt = PrivateApt(
        part.parent / f".apt-{suite}-{os.getpid()}",
        [f"deb [signed-by={DEBIAN_UPSTREAM_KEYRING}] {DEBIAN_UPSTREAM} {suite} main"],
        preferences=NO_KERNEL_PACKAGES,
        archives=downloads,
    )
    try:
        apt.run("update")
        seeds = debian_seed_packages()
        wanted = apt.download_uris(*seeds)
        apt.run("install", "--download-only", "--yes", "--quiet", *seeds)
    finally:
        shutil.rmtree(apt.base)
    repo = part / "debian" / suite
    repo.mkdir(parents=True)
    for archive_name, url in wanted.items():
        # Pool names carry no epoch (apt's archive names do, as %3a); the URL quotes ~ and +.
        os.link(downloads / archive_name, repo / unquote(url.rsplit("/", 1)[1]))
    build_debs([linux_headers_package(platform.release())], repo, part / ".scratch")
    shutil.rmtree(part / ".scratch")
    index_flat_repo(
        repo, key, {"Origin": "Debian", "Label": "Debian", "Suite": suite, "Codename": suite}
    )


def link_tree(source: Path, destination: Path) -> None:
    """Hard-link copy: the tree costs no space beyond its parts."""
    shutil.copytree(source, destination, copy_function=os.link, dirs_exist_ok=True)


def build_repos(cache_dir: Path, suites: list[str]) -> RepoTree:
    """Build (or reuse) the signed stand-in repositories for ``suites`` under ``cache_dir``.

    Parts are cached by a digest of everything they are built from (this module, the payloads,
    the key, the suite, the running kernel) and renamed into place only when complete.
    """
    cache_dir = cache_dir.resolve()
    key = ArchiveKey(cache_dir / "gnupg")
    kernel = platform.release()
    existing = key.fingerprint
    if existing is not None:
        tree = cache_dir / "trees" / sources_digest(existing, kernel, *suites)
        if tree.exists():
            return RepoTree(tree, tree / KEY_FILE, existing)
    with locked(cache_dir / ".lock"):
        fingerprint = key.ensure()
        parts = cache_dir / "parts"
        parts.mkdir(parents=True, exist_ok=True)
        try:
            nvidia = cached_build(
                parts / f"nvidia-{sources_digest(fingerprint)}",
                lambda part: build_nvidia_part(part, key),
            )
            debian = [
                cached_build(
                    parts / f"debian-{suite}-{sources_digest(fingerprint, kernel, suite)}",
                    lambda part, suite=suite: build_debian_part(  # type: ignore[misc]
                        suite, part, key, cache_dir / "downloads" / suite
                    ),
                )
                for suite in suites
            ]
        finally:
            key.stop_agent()

        def assemble(tree: Path) -> None:
            for part in (nvidia, *debian):
                link_tree(part, tree)
            (tree / KEY_FILE).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(key.public_key, tree / KEY_FILE)

        tree = cached_build(
            cache_dir / "trees" / sources_digest(fingerprint, kernel, *suites), assemble
        )
    # The copy in the tree: readable by apt's sandbox user, unlike the private GNUPGHOME.
    return RepoTree(tree, tree / KEY_FILE, fingerprint)


def default_cache_dir() -> Path:
    """Where the tests keep built repositories between runs (GPUFLEET_CACHE_DIR overrides)."""
    configured = os.environ.get("GPUFLEET_CACHE_DIR")
    if configured:
        return Path(configured) / "standin-repos"
    return Path.home() / ".cache" / "gpufleet" / "standin-repos"
