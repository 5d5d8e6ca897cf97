"""Stand-in apt repositories of NVIDIA for gpufleet's test hosts, and the tools to build them.

NVIDIA's repositories and a GPU cannot be reached from the test machines, so these are the only
NVIDIA packages gpufleet's tests install. They carry the real package names, versions and
dependency chains (testbed/standin_payloads and the catalogue below name the sources; what
the sources do not confirm is marked NOT FOUND) and install the files the real packages install,
with stand-in programs (nvidia-smi, nvcc, the container runtime and its hook) that print the real
formats. Every repository is flat and signed with a throwaway key; apt on the hosts verifies it
through signed-by, never trusted=yes.

testbed.repos assembles these (build_nvidia_part) with the OS mirrors of testbed.os_mirror into
the tree the fleets serve; its docstring shows the layout.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

REPO_HOST = "10.213.0.1"
REPO_PORT = 8080
REPO_URL = f"http://{REPO_HOST}:{REPO_PORT}/"

CUDA_REPO_PATH = "cuda/repos/ubuntu2004/x86_64/"
CONTAINER_REPO_PATH = "libnvidia-container/stable/deb/amd64/"

PAYLOADS = Path(__file__).with_name("standin_payloads")
MAINTAINER = "gpufleet test stand-in <gpufleet-test@invalid>"
KEY_USER_ID = "gpufleet test archive (throwaway) <gpufleet-test@invalid>"


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
    pre_depends: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    breaks: tuple[str, ...] = ()
    replaces: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
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
            "Pre-Depends": ", ".join(self.pre_depends),
            "Depends": ", ".join(self.depends),
            "Provides": ", ".join(self.provides),
            "Breaks": ", ".join(self.breaks),
            "Replaces": ", ".join(self.replaces),
            "Conflicts": ", ".join(self.conflicts),
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

# The directories of NVIDIA's CUDA repository this testbed stands in for
# (developer.download.nvidia.com/compute/cuda/repos/<directory>/x86_64/), and the signing key
# each publishes beside its index.
CUDA_DIRECTORIES: tuple[str, ...] = (
    "ubuntu2004",
    "ubuntu2204",
    "ubuntu2404",
    "debian11",
    "debian12",
    "debian13",
)
# debian13 is signed by 8793F200 (0218 2E60 104F CDC2 6EAE 1B85 97A5 D4CB 8793 F200): Debian 13's
# sqv rejects the SHA1-bound 3bf863cc since 2026-02-01 (NVIDIA/cuda-repo-management#30, #34,
# #39, #44).
# The others keep 3bf863cc (EB69 3B30 35CD 5710 E231 E123 A4B4 6996 3BF8 63CC; SIGNATURES.md there).
SECOND_KEY_DIRECTORIES = ("debian13",)
# The key files' names in the repositories: .../ubuntu2004/x86_64/3bf863cc.pub (nvidia/cuda
# Dockerfiles, repo-packages.md §0) and .../debian13/x86_64/8793F200.pub (install scripts on
# GitHub fetch that URL).
MAIN_KEY_FILE = "3bf863cc.pub"
SECOND_KEY_FILE = "8793F200.pub"


def cuda_repo_path(directory: str) -> str:
    return f"cuda/repos/{directory}/x86_64/"


def cuda_key_path(directory: str) -> str:
    """The key file NVIDIA publishes in a directory: cuda/repos/debian13/x86_64/8793F200.pub."""
    name = SECOND_KEY_FILE if directory in SECOND_KEY_DIRECTORIES else MAIN_KEY_FILE
    return cuda_repo_path(directory) + name


@dataclass(frozen=True)
class DriverRelease:
    """One driver release as one directory publishes it.

    ``revision`` is the Debian revision of the driver family, ``meta_revision`` that of
    cuda-drivers and cuda-drivers-<branch> (they differ on Ubuntu: 470.182.03-1 vs -0ubuntu1).
    """

    branch: str
    upstream: str
    revision: str = "1"
    meta_revision: str = "1"

    @property
    def version(self) -> str:
        return f"{self.upstream}-{self.revision}"

    @property
    def meta_version(self) -> str:
        return f"{self.upstream}-{self.meta_revision}"


# CUDA version nvidia-smi reports per branch (470: 11.4 in the real tables, 535 header: 12.2;
# 550: 12.4, 580: 13.0 (CUDA 13.0.0 ships 580.65.06, repos-2026.md), 590: 13.1: NOT FOUND in a
# captured table, chosen from the CUDA release each branch came with).
DRIVER_CUDA_VERSION = {"470": "11.4", "535": "12.2", "545": "12.3", "550": "12.4", "580": "13.0",
                       "590": "13.1"}  # fmt: skip
# The (>=) floors on nvidia-dkms and nvidia-kernel-common (470: Canonical's control file) and
# of Debian's cuda-drivers-<branch> on nvidia-driver (580: "nvidia-driver (>= 580.65.06)", NVIDIA
# forum thread on cuda-drivers-580 580.105.08-1, SOURCES.md §1). Others NOT FOUND: each
# branch's first release chosen.
DRIVER_DEPENDENCY_FLOOR = {"470": "470.129.06", "535": "535.54.03", "545": "545.23.06",
                           "550": "550.54.14", "580": "580.65.06", "590": "590.44.01"}  # fmt: skip
# NvIFR (libnvidia-ifr1) is in the 470 control file; R495+ dropped it.
BRANCHES_WITH_IFR = {"470"}
# The open kernel modules exist from R515 (NVIDIA's kernel-modules guide); public READMEs install
# nvidia-kernel-source-535-open and build it in /usr/src/nvidia-535.154.05, the proprietary path.
FIRST_OPEN_BRANCH = 515
# nvidia-open, NVIDIA's metapackage for the open flavour (in the debian13 index: a public repository
# probe requires 'cuda-keyring' and 'nvidia-open' there); from R560, when open became the default.
FIRST_NVIDIA_OPEN_BRANCH = 560
# nvidia-driver-pinning-<version> (repos-2026.md: "seen in use in 2026"): which branches and
# directories carry it and what it holds are NOT FOUND; chosen: releases of R580 and later.
FIRST_PINNING_BRANCH = 580


@dataclass(frozen=True)
class DriverFiles:
    """The stand-in files of one driver release, whichever naming packages them."""

    libcuda: dict[str, Payload]
    libcuda_links: dict[str, str]
    libnvidia_ml: dict[str, Payload]
    libnvidia_ml_links: dict[str, str]
    nvidia_smi: dict[str, Payload]
    persistenced: dict[str, Payload]
    persistenced_scripts: dict[str, str]
    kernel_source: dict[str, Payload]
    dkms: dict[str, Payload]
    dkms_scripts: dict[str, str]


def driver_files(upstream: str, cuda: str) -> DriverFiles:
    lib_dir = "/usr/lib/x86_64-linux-gnu"
    src_dir = f"/usr/src/nvidia-{upstream}"
    return DriverFiles(
        libcuda=library_files(lib_dir, "libcuda.so.1", f"libcuda.so.{upstream}", upstream),
        libcuda_links={f"{lib_dir}/libcuda.so.1": f"libcuda.so.{upstream}"},
        libnvidia_ml=library_files(
            lib_dir, "libnvidia-ml.so.1", f"libnvidia-ml.so.{upstream}", upstream
        ),
        libnvidia_ml_links={f"{lib_dir}/libnvidia-ml.so.1": f"libnvidia-ml.so.{upstream}"},
        nvidia_smi={
            "/usr/bin/nvidia-smi": program(
                "nvidia-smi",
                DRIVER_VERSION=upstream,
                CUDA_VERSION=cuda,
                LOADED_MODULE=payload_text("loaded-module"),
            ),
        },
        persistenced={
            "/usr/bin/nvidia-persistenced": program("nvidia-persistenced", DRIVER_VERSION=upstream),
            "/lib/systemd/system/nvidia-persistenced.service": text_file(
                payload_text("nvidia-persistenced.service")
            ),
        },
        persistenced_scripts={"postinst": payload_text("nvidia-compute-utils.postinst")},
        kernel_source={
            f"{src_dir}/Makefile": text_file((PAYLOADS / "nvidia-kernel/Makefile").read_text()),
            f"{src_dir}/nvidia-standin.c": text_file(
                payload_text("nvidia-kernel/nvidia-standin.c", DRIVER_VERSION=upstream)
            ),
        },
        dkms={
            f"{src_dir}/dkms.conf": text_file(
                payload_text("nvidia-kernel/dkms.conf", DRIVER_VERSION=upstream)
            )
        },
        dkms_scripts={
            "postinst": payload_text("nvidia-dkms.postinst", DRIVER_VERSION=upstream),
            "prerm": payload_text("nvidia-dkms.prerm", DRIVER_VERSION=upstream),
        },
    )


def driver_packages(naming: str, release: DriverRelease) -> list[StandinPackage]:
    """One driver release's packages as a directory of ``naming`` ("ubuntu" or "debian") names them.

    Both namings install the same stand-in files (one DriverFiles), so what gpufleet verifies on
    a host does not depend on which naming installed the driver.
    """
    files = driver_files(release.upstream, DRIVER_CUDA_VERSION[release.branch])
    family = (ubuntu_driver_family if naming == "ubuntu" else debian_driver_family)(release, files)
    return (
        family
        + companion_packages(release)
        + pinning_packages(release)
        + [fabricmanager_package(release)]
    )


def ubuntu_driver_family(release: DriverRelease, files: DriverFiles) -> list[StandinPackage]:
    """The nvidia-driver-<branch> family, shaped as Canonical's control (repo-packages.md §3)."""
    branch, upstream, version = release.branch, release.upstream, release.version
    floor = DRIVER_DEPENDENCY_FLOOR[branch]

    def own(name: str) -> str:
        return f"{name}-{branch}"

    def exact(name: str) -> str:
        return f"{own(name)} (= {version})"

    def at_least(name: str, minimum: str = upstream) -> str:
        return f"{own(name)} (>= {minimum})"

    def package(name: str, description: str, **fields: object) -> StandinPackage:
        return StandinPackage(own(name), version, description, **fields)  # type: ignore[arg-type]

    with_ifr = branch in BRANCHES_WITH_IFR
    with_open = int(branch) >= FIRST_OPEN_BRANCH

    def driver_depends(flavour: str) -> tuple[str, ...]:
        return (
            exact("libnvidia-gl"),
            f"{own('nvidia-dkms')}{flavour} (>= {floor})",
            at_least("nvidia-kernel-common", floor),
            f"{own('nvidia-kernel-source')}{flavour} (= {version})",
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
        )

    # The open and proprietary kernel sources install the same /usr/src/nvidia-<version> and
    # provide the same virtual names: each flavour conflicts with the other's package (Canonical's
    # control.in for -open is NOT FOUND verbatim; this keeps apt from mixing the flavours).
    def flavour_packages(flavour: str, other: str) -> list[StandinPackage]:
        conflicts = lambda name: (f"{own(name)}{other}",) if with_open else ()  # noqa: E731
        suffix = " (open kernel modules)" if flavour else ""
        return [
            StandinPackage(
                f"{own('nvidia-kernel-source')}{flavour}",
                version,
                f"NVIDIA kernel source package{suffix}",
                provides=("nvidia-kernel-source",),
                conflicts=conflicts("nvidia-kernel-source"),
                files=files.kernel_source,
            ),
            StandinPackage(
                f"{own('nvidia-dkms')}{flavour}",
                version,
                f"NVIDIA DKMS package{suffix}",
                depends=(
                    "dkms",
                    f"{own('nvidia-kernel-source')}{flavour} (>= {floor})",
                    at_least("nvidia-kernel-common", floor),
                ),
                provides=("nvidia-dkms-kernel",),
                conflicts=conflicts("nvidia-dkms"),
                files=files.dkms,
                scripts=files.dkms_scripts,
            ),
            StandinPackage(
                f"{own('nvidia-driver')}{flavour}",
                version,
                f"NVIDIA driver metapackage{suffix}",
                depends=driver_depends(flavour),
                conflicts=conflicts("nvidia-driver"),
            ),
            # Headless metapackages: Depends as Canonical's control (repo-packages.md §3).
            StandinPackage(
                f"{own('nvidia-headless-no-dkms')}{flavour}",
                version,
                f"NVIDIA headless metapackage - no DKMS{suffix}",
                depends=(
                    at_least("nvidia-kernel-common", floor),
                    f"{own('nvidia-kernel-source')}{flavour} (= {version})",
                    exact("libnvidia-compute"),
                    exact("nvidia-compute-utils"),
                    exact("libnvidia-cfg1"),
                ),
            ),
            StandinPackage(
                f"{own('nvidia-headless')}{flavour}",
                version,
                f"NVIDIA headless metapackage{suffix}",
                depends=(
                    f"{own('nvidia-headless-no-dkms')}{flavour}",
                    f"{own('nvidia-dkms')}{flavour}",
                ),
            ),
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
            files={**files.libcuda, **files.libnvidia_ml},
            symlinks={**files.libcuda_links, **files.libnvidia_ml_links},
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
        # ${nvidia:xorgDepends} (the X server ABI; xserver-xorg-core per NVIDIA's control.in) is
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
            files=files.nvidia_smi,
        ),
        package(
            "nvidia-compute-utils",
            "NVIDIA compute utilities",
            depends=(own("libnvidia-compute"), "adduser"),
            provides=("nvidia-compute-utils", "nvidia-persistenced"),
            files=files.persistenced,
            scripts=files.persistenced_scripts,
        ),
        package(
            "nvidia-kernel-common",
            "Shared files used with the kernel module",
            provides=("nvidia-kernel-common",),
        ),
        *flavour_packages("", "-open"),
        *(flavour_packages("-open", "") if with_open else []),
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
    # pins nothing under it; cuda-drivers follows the newest branch (one cuda-drivers per
    # release, depending on its branch's: `apt list -a cuda-drivers` lists every branch's
    # releases, holodeck PR #280).
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
    packages += cuda_drivers_packages(release, tuple(cuda_drivers_depends))
    return packages


def cuda_drivers_packages(release: DriverRelease, depends: tuple[str, ...]) -> list[StandinPackage]:
    branch_meta = f"cuda-drivers-{release.branch}"
    return [
        StandinPackage(
            branch_meta, release.meta_version, "CUDA Driver native dependencies", depends=depends
        ),
        StandinPackage(
            "cuda-drivers",
            release.meta_version,
            "CUDA Driver meta-package",
            depends=(f"{branch_meta} (>= {release.upstream})",),
        ),
    ]


def debian_driver_family(release: DriverRelease, files: DriverFiles) -> list[StandinPackage]:
    """Debian's names (NVIDIA/debian-packaging-nvidia-driver debian/control, branch 535).

    Depends keep the control's edges between these packages; edges to packages the stand-ins
    leave out (the GL/EGL/Vulkan libraries, nvidia-support, glx-alternative-nvidia,
    nvidia-installer-cleanup, nvidia-kernel-common) are dropped. nvidia-driver-cuda,
    nvidia-kernel-open-dkms and firmware-nvidia-gsp are not in that control (later branches):
    their Depends are NOT FOUND and chosen.
    """
    upstream, version = release.upstream, release.version
    alternative = f"nvidia-alternative (= {version})"

    def package(name: str, description: str, **fields: object) -> StandinPackage:
        return StandinPackage(name, version, description, **fields)  # type: ignore[arg-type]

    def dkms(name: str, other: str, description: str) -> StandinPackage:
        return package(
            name,
            description,
            depends=("dkms", "nvidia-kernel-support--v1", f"firmware-nvidia-gsp (= {version})"),
            provides=(f"nvidia-kernel-{upstream}",),
            # Both build the same stand-in /usr/src/nvidia-<version>: NOT FOUND, chosen.
            conflicts=(other,),
            files={**files.kernel_source, **files.dkms},
            scripts=files.dkms_scripts,
        )

    packages = [
        package(
            "nvidia-driver",
            "NVIDIA metapackage",
            depends=(
                f"nvidia-driver-libs (= {version})",
                f"nvidia-driver-bin (= {version})",
                f"xserver-xorg-video-nvidia (= {version})",
                alternative,
                f"nvidia-kernel-dkms (= {version}) | nvidia-kernel-{upstream}",
            ),
            provides=("nvidia-driver-any", "nvidia-glx-any"),
        ),
        package(
            "nvidia-driver-cuda",
            "NVIDIA driver CUDA integration components",
            depends=(
                f"libcuda1 (= {version})",
                f"nvidia-smi (= {version})",
                f"nvidia-persistenced (= {version})",
                f"nvidia-kernel-support (= {version})",
            ),
        ),
        package(
            "nvidia-alternative",
            "allows the selection of NVIDIA as GLX provider",
            provides=("nvidia-alternative--kmod-alias",),
        ),  # fmt: skip
        package(
            "nvidia-kernel-support",
            "NVIDIA binary kernel module support files",
            depends=(alternative, "nvidia-alternative--kmod-alias", "nvidia-modprobe (>= 352)"),
            provides=("nvidia-kernel-support-any", "nvidia-kernel-support--v1"),
        ),
        dkms(
            "nvidia-kernel-dkms",
            "nvidia-kernel-open-dkms",
            "NVIDIA binary kernel module DKMS source",
        ),  # fmt: skip
        dkms(
            "nvidia-kernel-open-dkms",
            "nvidia-kernel-dkms",
            "NVIDIA binary kernel module DKMS source (open kernel modules)",
        ),  # fmt: skip
        package(
            "firmware-nvidia-gsp",
            "NVIDIA GSP firmware",
            architecture="all",
            files={f"/lib/firmware/nvidia/{upstream}/gsp_tu10x.bin": text_file("stand-in\n")},
        ),
        package(
            "xserver-xorg-video-nvidia",
            "NVIDIA binary Xorg driver",
            depends=(alternative,),
            provides=("xserver-xorg-video-nvidia-any",),
        ),  # fmt: skip
        package(
            "nvidia-driver-bin",
            "NVIDIA driver support binaries",
            depends=(alternative,),
            provides=(f"nvidia-driver-bin-{upstream}",),
            conflicts=(f"nvidia-driver-bin-{upstream}",),
        ),
        package(
            "libnvidia-cfg1",
            "NVIDIA binary OpenGL/GLX configuration library",
            depends=(alternative,),
            provides=("libnvidia-cfg1-any",),
        ),  # fmt: skip
        package(
            "nvidia-driver-libs",
            "NVIDIA metapackage (OpenGL/GLX/EGL/GLES libraries)",
            provides=("nvidia-driver-libs-any",),
        ),  # fmt: skip
        package(
            "nvidia-smi",
            "NVIDIA System Management Interface",
            depends=(alternative, f"libnvidia-ml1 (= {version})"),
            files=files.nvidia_smi,
        ),
        package(
            "libnvidia-ml1",
            "NVIDIA Management Library (NVML) runtime library",
            depends=(alternative,),
            provides=(f"libnvidia-ml.so.1 (= {upstream})",),
            files=files.libnvidia_ml,
            symlinks=files.libnvidia_ml_links,
            runs_ldconfig=True,
        ),
        package(
            "libcuda1",
            "NVIDIA CUDA Driver Library",
            depends=(alternative,),
            provides=(f"libcuda.so.1 (= {upstream})", "libcuda1-any"),
            files=files.libcuda,
            symlinks=files.libcuda_links,
            runs_ldconfig=True,
        ),
        # Debian's nvidia-persistenced runs as its own user too (hence adduser).
        package(
            "nvidia-persistenced",
            "daemon to maintain persistent software state in the NVIDIA driver",
            depends=("adduser", "libnvidia-cfg1-any"),
            files=files.persistenced,
            scripts=files.persistenced_scripts,
        ),
    ]
    # cuda-drivers-<branch> on Debian: "nvidia-driver (>= 580.65.06)" for 580 (the floor, not the
    # release: cuda-drivers-580 580.105.08-1 "improperly pulls in v590 components", NVIDIA forum,
    # SOURCES.md §1); the rest of its Depends NOT FOUND.
    floor = DRIVER_DEPENDENCY_FLOOR[release.branch]
    packages += cuda_drivers_packages(
        release, (f"nvidia-driver (>= {floor})", f"nvidia-driver-cuda (>= {floor})")
    )
    if int(release.branch) >= FIRST_NVIDIA_OPEN_BRANCH:
        packages.append(
            package(
                "nvidia-open",
                "NVIDIA driver with the open kernel modules (metapackage)",
                depends=(f"nvidia-driver (= {version})", f"nvidia-kernel-open-dkms (= {version})"),
            )
        )
    return packages


def companion_packages(release: DriverRelease) -> list[StandinPackage]:
    """The unsuffixed tools each release ships (repos-2026.md: the 470.182.03 family "plus the
    unsuffixed nvidia-modprobe, nvidia-settings, libxnvctrl0"), at the family's revision (NOT
    FOUND: chosen). nvidia-settings depends on libxnvctrl0 (= version)."""
    version = release.version
    return [
        StandinPackage(
            "nvidia-modprobe", version, "Load the NVIDIA kernel driver and create device files"
        ),
        StandinPackage("libxnvctrl0", version, "NV-CONTROL X extension (runtime library)"),
        StandinPackage(
            "nvidia-settings",
            version,
            "Tool for configuring the NVIDIA graphics driver",
            depends=(f"libxnvctrl0 (= {version})",),
        ),
    ]


FIRST_UNSUFFIXED_FABRIC_MANAGER_BRANCH = 580


def fabricmanager_package(release: DriverRelease) -> StandinPackage:
    """nvidia-fabricmanager-<branch>, what HGX systems with NVSwitch need at the driver's version.

    Fields and paths from NVIDIA/apt-packaging-fabric-manager (debian/templates/control.in and
    nvidia-fabricmanager-BRANCH.install.in); its revision is -1 in both namings (535.161.07-1,
    issue #3 there). nvswitch-audit, the topology files and the -dev package are left out. From
    R580 NVIDIA names it nvidia-fabricmanager, unsuffixed (gpu-driver-container's
    fabricmanager_install: `nvidia-fabricmanager=${DRIVER_VERSION}-1` from branch 580).
    """
    nvswitch_dir = "/usr/share/nvidia/nvswitch"
    unsuffixed = int(release.branch) >= FIRST_UNSUFFIXED_FABRIC_MANAGER_BRANCH
    # The suffixed packages stand for the unsuffixed name, so two branches never coexist.
    others = () if unsuffixed else ("nvidia-fabricmanager",)
    return StandinPackage(
        "nvidia-fabricmanager" if unsuffixed else f"nvidia-fabricmanager-{release.branch}",
        f"{release.upstream}-1",
        "Fabric Manager for NVSwitch based systems.",
        depends=("libc6 (>= 2.2.1)",),
        provides=others,
        replaces=others,
        conflicts=others,
        files={
            "/usr/bin/nv-fabricmanager": program(
                "nv-fabricmanager",
                DRIVER_VERSION=release.upstream,
                LOADED_MODULE=payload_text("loaded-module"),
            ),
            "/lib/systemd/system/nvidia-fabricmanager.service": text_file(
                payload_text("nvidia-fabricmanager.service")
            ),
            f"{nvswitch_dir}/fabricmanager.cfg": text_file(payload_text("fabricmanager.cfg")),
        },
    )


def pinning_packages(release: DriverRelease) -> list[StandinPackage]:
    """nvidia-driver-pinning-<version>: an apt preferences file holding the driver at its release.

    The package's contents are NOT FOUND: chosen as the apt pin its name describes.
    """
    if int(release.branch) < FIRST_PINNING_BRANCH:
        return []
    name = f"nvidia-driver-pinning-{release.upstream}"
    return [
        StandinPackage(
            name,
            release.version,
            f"Pins the NVIDIA driver packages to {release.upstream}",
            architecture="all",
            files={
                f"/etc/apt/preferences.d/{name}": text_file(
                    "Package: *nvidia* libcuda* libxnvctrl* cuda-drivers*\n"
                    f"Pin: version {release.upstream}-*\nPin-Priority: 1000\n"
                )
            },
        )
    ]


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
    # 11.8.0 (ubuntu2204, debian11): cudart/nvcc 11.8.89, cuBLAS 11.11.3.6, driver 520.61.05 and the
    # banner as widely printed by `nvcc --version`; not in the sources read: NOT FOUND.
    ToolkitRelease(
        "11.8.0",
        "11.8.89",
        "11.8.89",
        "11.11.3.6",
        "520.61.05",
        "Wed_Sep_21_10:33:58_PDT_2022",
        "cuda_11.8.r11.8/compiler.31833905_0",
        "2022",
    ),
    # 12.6.3 (ubuntu2404, debian12; driver 560.35.05): component versions and banner NOT FOUND.
    ToolkitRelease(
        "12.6.3",
        "12.6.77",
        "12.6.85",
        "12.6.4.1",
        "560.35.05",
        "Thu_Nov__7_19:25:04_PST_2024",
        "cuda_12.6.r12.6/compiler.35059454_0",
        "2024",
    ),
    # 13.0.0 (debian13; driver 580.65.06, repos-2026.md): component versions and banner NOT FOUND.
    ToolkitRelease(
        "13.0.0",
        "13.0.48",
        "13.0.48",
        "13.0.0.19",
        "580.65.06",
        "Wed_Jul_16_07:30:01_PM_PDT_2025",
        "cuda_13.0.r13.0/compiler.36260728_0",
        "2025",
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
# newest build, which an unpinned install picks. libnccl2: the 11.2 pin is real; the cuda12.2
# build (2.18.5) is NOT FOUND, chosen as the newest. Each directory lists its own (below).

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


# DCGM (gpufleet/stack/SOURCES.md, "MIG layouts and DCGM" §6-7): 3.3.9, the last 3.x and
# gpufleet's pin for R470; 4.5.3, its pin for R535 and R580; 4.6.0, newer, which an unpinned
# install picks. Which directories carry which releases is NOT FOUND (1:3.3.9 is in ubuntu2204
# and ubuntu2404): every directory carries all three.
DCGM_STANDIN_RELEASES = ("3.3.9", "4.5.3", "4.6.0")
# The 4.x plugin packages per CUDA major of the driver (cuda13 from 4.4.1).
DCGM4_CUDA_MAJORS = (11, 12, 13)
# scripts/deb/postinst of NVIDIA/DCGM (3.3.9 and 4.x alike), its license header left out: the
# account nv-hostengine's --service-account names, and the diagnostic's log folder.
DCGM_POSTINST = """\
#!/bin/sh
# set -e added below so we don't quit on an existing user
set -uf

service_user=nvidia-dcgm
default_log_dir=/var/log/nvidia-dcgm

# Options:
# -U: always create group, regardless of login.defs configuration
# -r: system user (implies -M, no home directory)
# -s: specify shell
useradd -Urs /usr/sbin/nologin ${service_user}
retcode=$?

# From this point on, automatically exit on error
set -e

if [ $retcode -ne 0 ] && [ $retcode -ne 9 ]; then
    exit $retcode
fi

mkdir -p ${default_log_dir}
chown ${service_user}:${service_user} ${default_log_dir}
chmod 755 ${default_log_dir}
"""
# 3.x's package replaced these (cmake/packaging.cmake at 3.3.9).
DCGM3_REPLACED = (
    "datacenter-gpu-manager",
    "datacenter-gpu-manager-fabricmanager (<< 2.0)",
    "datacenter-gpu-manager-dcp-nda-only",
    "datacenter-gpu-manager-collectd",
    "datacenter-gpu-manager-wsgi",
    "datacenter-gpu-manager-fabricmanager-internal-api-header",
)


def dcgm_files(version: str) -> dict[str, Payload]:
    """nv-hostengine, dcgmi and nvidia-dcgm.service: the unit of 4.1.0 to 4.6.0 (NVIDIA's
    template, filled as CMake fills it). 3.3.9's differs in its comments and has
    Conflicts=dcgm.service for 4.x's Alias=dcgm.service, beside a deprecated dcgm.service it
    ships too: not modelled."""
    return {
        "/usr/bin/nv-hostengine": program("nv-hostengine", DCGM_VERSION=version),
        "/usr/bin/dcgmi": program("dcgmi", DCGM_VERSION=version),
        "/usr/lib/systemd/system/nvidia-dcgm.service": text_file(
            payload_text("nvidia-dcgm.service", CMAKE_INSTALL_BINDIR="bin")
        ),
    }


def dcgm_packages() -> list[StandinPackage]:
    """DCGM's packages as cmake/packaging.cmake of each release names them: 3.x one package,
    epoch 1 and no revision; 4.x the core and a plugins package per CUDA major, 1:X-1, the
    plugins at the core's exact version. The plugins packages install nothing here (the
    diagnostic stand-in needs no plugin); 4.x's Recommends (libnuma1, and the closed-source
    -proprietary packages of NVIDIA's repository) are left out, as gpufleet installs without."""
    packages = []
    for release in DCGM_STANDIN_RELEASES:
        if int(release.split(".")[0]) < 4:
            packages.append(
                StandinPackage(
                    "datacenter-gpu-manager",
                    f"1:{release}",
                    "NVIDIA® Datacenter GPU Management Tools",
                    depends=("libc6 (>= 2.17)",),
                    provides=("datacenter-gpu-manager",),
                    conflicts=DCGM3_REPLACED,
                    replaces=DCGM3_REPLACED,
                    files=dcgm_files(release),
                    scripts={"postinst": DCGM_POSTINST},
                )
            )
            continue
        version = f"1:{release}-1"
        core = StandinPackage(
            "datacenter-gpu-manager-4-core",
            version,
            "CUDA-version agnostic components of NVIDIA® Datacenter GPU Manager (DCGM)",
            pre_depends=("passwd", "login"),
            depends=("libc6 (>= 2.27)", "lshw"),
            conflicts=("datacenter-gpu-manager",),
            files=dcgm_files(release),
            scripts={"postinst": DCGM_POSTINST},
        )
        packages.append(core)
        packages += [
            StandinPackage(
                f"datacenter-gpu-manager-4-cuda{major}",
                version,
                f"NVIDIA® Datacenter GPU Manager (DCGM) binaries for CUDA{major} systems",
                depends=(f"{core.name} (= {version})",),
                provides=(f"datacenter-gpu-manager-4 (= {version})",),
            )
            for major in DCGM4_CUDA_MAJORS
        ]
    return packages


# 1.17.4 (gpufleet's default), 1.17.8 (CVE-2025-23266/23267 fixed) and 1.18.2, the newest 1.18.x
# (git tags, SOURCES.md §10).
CONTAINER_TOOLKIT_VERSIONS = ("1.17.4", "1.17.8", "1.18.2")
# Commits NOT FOUND: derived from the version.
CONTAINER_TOOLKIT_COMMITS: dict[str, str] = {}


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
    # From 1.18.0 the tools must match exactly (commit f0ea60a2, SOURCES.md §10).
    exact_tools = tuple(int(part) for part in upstream.split(".")[:2]) >= (1, 18)
    tools_floor = f"libnvidia-container-tools ({'=' if exact_tools else '>='} {version})"
    toolkit = StandinPackage(
        "nvidia-container-toolkit",
        version,
        "NVIDIA Container toolkit",
        depends=(
            f"nvidia-container-toolkit-base (= {version})",
            tools_floor,
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


@dataclass(frozen=True)
class CudaDirectoryContents:
    """What one directory of NVIDIA's CUDA repository carries (a small, representative part)."""

    naming: str  # "ubuntu": nvidia-driver-<branch> family; "debian": Debian's names
    drivers: tuple[DriverRelease, ...]
    toolkits: tuple[str, ...]  # TOOLKIT_RELEASES by release
    cudnn: tuple[tuple[str, str], ...] = ()  # (libcudnn8 build, CUDA release)
    nccl: tuple[tuple[str, str], ...] = ()  # (libnccl2 build, CUDA release)


def ubuntu(branch: str, upstream: str, revision: str, meta_revision: str) -> DriverRelease:
    return DriverRelease(branch, upstream, revision, meta_revision)


CUDA_DIRECTORY_CONTENTS: dict[str, CudaDirectoryContents] = {
    # R470: every release 470.42.01-1 .. 470.239.06-1 (apt-cache policy,
    # apt-packaging-fabric-manager#3);
    # cuda-drivers-470 at -1, the family at -0ubuntu1 (a public pin script, repos-2026.md).
    # 535.183.01: cuda-drivers-535=535.183.01-1 (dstack PR #2355); its family's -0ubuntu1 NOT FOUND
    # (as 470's). Newest branch of ubuntu2004: NOT FOUND (PR #89 names 580 in 22.04 and 24.04
    # only); 550.144.03 chosen, whose cuda-drivers is 550.144.03-0ubuntu1 on Ubuntu
    # (holodeck PR #280).
    "ubuntu2004": CudaDirectoryContents(
        "ubuntu",
        (
            ubuntu("470", "470.141.03", "0ubuntu1", "1"),
            ubuntu("470", "470.182.03", "0ubuntu1", "1"),
            ubuntu("470", "470.239.06", "0ubuntu1", "1"),
            ubuntu("535", "535.183.01", "0ubuntu1", "1"),
            ubuntu("550", "550.144.03", "0ubuntu1", "0ubuntu1"),
        ),
        ("11.2.0", "11.2.1", "11.2.2", "12.2.2"),
        (("8.1.0.77", "11.2"), ("8.1.1.33", "11.2"), ("8.9.7.29", "12.2")),
        (("2.8.4", "11.2"), ("2.18.5", "12.2")),
    ),
    # From R515 (ansible-role-nvidia-driver PR #65), up to R580 (PR #89). Two R580 releases for
    # driver upgrades: 580.95.05 (holodeck#783; its Ubuntu revision NOT FOUND, -0ubuntu1 as
    # 570.86.15-0ubuntu1 in holodeck PR #280) and 580.126.16-1ubuntu1 (infra-controller PR #5927,
    # cuda-drivers-580 and libnvidia-compute-580 both). Toolkit from 11.7 (Jimver/cuda-toolkit#183):
    # 11.8.0 and 12.2.2 chosen; libcudnn8 8.9.7.29 for both (NOT FOUND for this directory).
    "ubuntu2204": CudaDirectoryContents(
        "ubuntu",
        (
            ubuntu("535", "535.183.01", "0ubuntu1", "1"),
            ubuntu("580", "580.95.05", "0ubuntu1", "0ubuntu1"),
            ubuntu("580", "580.126.16", "1ubuntu1", "1ubuntu1"),
        ),
        ("11.8.0", "12.2.2"),
        (("8.9.7.29", "11.8"), ("8.9.7.29", "12.2")),
        (("2.18.5", "12.2"),),
    ),
    # From R550 (cuda-drivers-515 unavailable, PR #89) to R580; toolkit 12.5+ seen: 12.6.3 chosen;
    # no cuDNN 8 (repos-2026.md).
    "ubuntu2404": CudaDirectoryContents(
        "ubuntu",
        (
            ubuntu("550", "550.144.03", "0ubuntu1", "0ubuntu1"),
            ubuntu("580", "580.126.16", "1ubuntu1", "1ubuntu1"),
        ),
        ("12.6.3",),
    ),
    # Debian's names (fabric manager from 495, apt-packaging-fabric-manager#2); toolkit 11.6+
    # seen. Releases NOT FOUND for this directory: 535.183.01 and 550.90.07 chosen.
    "debian11": CudaDirectoryContents(
        "debian",
        (DriverRelease("535", "535.183.01"), DriverRelease("550", "550.90.07")),
        ("11.8.0", "12.2.2"),
    ),
    # Nothing older than 545.23.06 (apt-cache policy nvidia-driver on debian12:
    # 545.23.06-1 .. 560.28.03-1, elFarto/nvidia-vaapi-driver#312); cuda-drivers-580
    # 580.105.08-1 (NVIDIA forum, SOURCES.md §1). Opened with CUDA 12.3
    # (nvidia-container-toolkit#181).
    "debian12": CudaDirectoryContents(
        "debian",
        (
            DriverRelease("545", "545.23.08"),
            DriverRelease("550", "550.90.07"),
            DriverRelease("580", "580.105.08"),
        ),
        ("12.6.3",),
    ),
    # New in 2026, without R580 (NVIDIA/cuda-repo-management#38, #40: "the new debian 13 repo do
    # not have the previous 580 LTS drivers"); R590 releases NOT FOUND by version: 590.44.01
    # (CUDA 13.1's) and 590.48.01 chosen. Toolkit 13.0+ (repos-2026.md).
    "debian13": CudaDirectoryContents(
        "debian",
        (DriverRelease("590", "590.44.01"), DriverRelease("590", "590.48.01")),
        ("13.0.0",),
    ),
}


def cuda_directory_packages(directory: str) -> list[StandinPackage]:
    contents = CUDA_DIRECTORY_CONTENTS[directory]
    toolkits = {toolkit.release: toolkit for toolkit in TOOLKIT_RELEASES}
    packages = [p for r in contents.drivers for p in driver_packages(contents.naming, r)]
    packages += [p for release in contents.toolkits for p in toolkit_packages(toolkits[release])]
    packages += [p for build, cuda in contents.cudnn for p in cudnn_packages(build, cuda)]
    packages += [nccl_package(build, cuda) for build, cuda in contents.nccl]
    packages += dcgm_packages()
    return unique_packages(packages)


def cuda_repo_packages(directory: str = "ubuntu2004") -> list[StandinPackage]:
    return cuda_directory_packages(directory)


def nvidia_standin_packages(cuda_directory: str) -> list[StandinPackage]:
    """The directory's CUDA repository packages and the container repository's."""
    return cuda_directory_packages(cuda_directory) + container_repo_packages()


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
    names = {d.split()[0] for p in packages for d in (*p.pre_depends, *p.depends)}
    return sorted(names - own)


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


def build_nvidia_part(part: Path, key: ArchiveKey, second_key: ArchiveKey) -> None:
    """cuda/repos/<directory>/x86_64/ for every CUDA_DIRECTORIES entry and the container repo.

    Each CUDA directory is signed by its key (``second_key`` for SECOND_KEY_DIRECTORIES) and
    publishes that key's public file under NVIDIA's name (cuda_key_path).
    """
    container = part / CONTAINER_REPO_PATH
    for directory in CUDA_DIRECTORIES:
        build_debs(
            cuda_directory_packages(directory), part / cuda_repo_path(directory), part / ".scratch"
        )
    build_debs(container_repo_packages(), container, part / ".scratch")
    shutil.rmtree(part / ".scratch")
    for directory in CUDA_DIRECTORIES:
        signer = second_key if directory in SECOND_KEY_DIRECTORIES else key
        # The Release label users pin with (`Pin: release l=NVIDIA CUDA`, repo-packages.md §0).
        index_flat_repo(
            part / cuda_repo_path(directory), signer, {"Origin": "NVIDIA", "Label": "NVIDIA CUDA"}
        )
        (part / cuda_key_path(directory)).write_bytes(signer.public_key.read_bytes())
    index_flat_repo(container, key, {"Origin": "NVIDIA", "Label": "libnvidia-container"})
    (part / "libnvidia-container" / "gpgkey").write_bytes(key.public_key.read_bytes())
    # The list file NVIDIA's install guide downloads, pointing at this mirror.
    (part / "libnvidia-container/stable/deb/nvidia-container-toolkit.list").write_text(
        "deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] "
        f"{REPO_URL}libnvidia-container/stable/deb/$(ARCH) /\n"
    )
