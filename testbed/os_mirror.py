"""The hermetic subset mirror of one OS release: what its test hosts install from their vendor.

The hosts reach no archive but the fleet's own, so each release gets a flat repository at
``os/<release.name>/`` holding everything the hosts need from their vendor (docker.io, dkms,
python3-venv, unattended-upgrades, what the NVIDIA stand-ins depend on, Slurm on Ubuntu 20.04,
...) with the complete dependency closure, plus stand-in headers of the running kernel for DKMS.
It is re-signed with the test archive key; the hosts' apt verifies it through signed-by.

The upstream is the one the release's root filesystem was built from: the apt sources
mmdebstrap chose, read back from the tree (testbed.rootfs.upstream_sources), all pockets it
names (release, -updates, -security). Downloads are verified with the release's own archive
keys: Debian's keyring of this machine, or Ubuntu's vendored 2018 key, fingerprint-checked.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote

from testbed.os_releases import OsRelease
from testbed.rootfs import HOST_PACKAGES, AptSource, archive_keyring
from testbed.standin_repo import (
    ArchiveKey,
    PrivateApt,
    StandinPackage,
    build_debs,
    external_dependencies,
    index_flat_repo,
    nvidia_standin_packages,
    text_file,
)

OS_MIRROR_DIR = "os"
# Where the hosts keep the test archive key that signs their OS mirror.
OS_KEYRING_ON_HOST = "/usr/share/keyrings/gpufleet-test-archive.asc"

# What every host may install besides its base: the container engine and the driver build
# (docker.io, dkms), a venv for the TensorFlow smoke test, and unattended-upgrades, whose
# Package-Blacklist gpufleet writes.
EXTRA_PACKAGES = ("docker.io", "dkms", "python3-venv", "unattended-upgrades")

# Ubuntu's own driver (restricted), which one test installs for real (tests/e2e/
# test_gpu_planning.py): Canonical's R535-server build, headless, with the open modules it
# built and signed for the generic kernels, which bring that kernel's image along.
UBUNTU_ARCHIVE_DRIVER: dict[str, tuple[str, ...]] = {
    "ubuntu20.04": (
        "nvidia-headless-no-dkms-535-server-open",
        "nvidia-kernel-source-535-server-open",
        "nvidia-kernel-common-535-server",
        "nvidia-compute-utils-535-server",
        "nvidia-utils-535-server",
        "libnvidia-cfg1-535-server",
        "libnvidia-common-535-server",
        "libnvidia-compute-535-server",
        "libnvidia-decode-535-server",
        "libnvidia-encode-535-server",
        "libnvidia-extra-535-server",
        "linux-modules-nvidia-535-server-open-generic",
    ),
}
RESTRICTED = "restricted"

# Slurm (universe: slurm-wlm 19.05, munge 0.5.13) for the test bed's cluster (testbed/slurm.py):
# the GPU hosts are its compute nodes, whose drains the driver rollout drives with scontrol.
# Without Recommends: libhwloc15's would bring Ubuntu's libxnvctrl0 (R470) into the mirror, beside
# the driver packages gpufleet pins.
UBUNTU_ARCHIVE_SLURM: dict[str, tuple[str, ...]] = {
    "ubuntu20.04": ("munge", "slurmctld", "slurmd", "slurm-client"),
}

# Kernel images and headers are not mirrored: the hosts share the machine's kernel and get the
# stand-in headers package instead (so dkms's Recommends on linux-headers-* stay unmet). Only
# UBUNTU_ARCHIVE_DRIVER's modules bring a kernel image, which the hosts install but never boot.
NO_KERNEL_PACKAGES = """\
Package: linux-image-* linux-headers-*
Pin: release *
Pin-Priority: -1
"""


def mirror_path(release: OsRelease) -> str:
    """The release's mirror in the repository tree, relative to its root (ends in /)."""
    return f"{OS_MIRROR_DIR}/{release.name}/"


def seed_packages(release: OsRelease) -> list[str]:
    """What the release's subset must hold, with everything these depend on or recommend."""
    return [
        # The host's own base (so versions the stand-ins pull stay consistent with it).
        "?essential",
        "?priority(required)",
        *HOST_PACKAGES,
        *EXTRA_PACKAGES,
        *external_dependencies(nvidia_standin_packages(release.cuda_directory)),
    ]


def linux_headers_package(kernel: str) -> StandinPackage:
    """Headers of the running kernel (the hosts share it): what DKMS looks for, nothing more."""
    numeric = re.match(r"[0-9]+(\.[0-9]+)*", kernel)
    if numeric is None:
        raise ValueError(f"kernel release {kernel!r} does not start with a version")
    headers = f"/usr/src/linux-headers-{kernel}"
    return StandinPackage(
        f"linux-headers-{kernel}",
        f"{numeric.group()}-1",
        f"Header files for Linux {kernel} (stand-in for the running kernel's)",
        files={
            f"{headers}/Makefile": text_file(
                f"# gpufleet stand-in headers of Linux {kernel}\n"
                f"KERNELRELEASE = {kernel}\nkernelrelease:\n\t@echo $(KERNELRELEASE)\n"
            ),
            f"{headers}/.config": text_file("CONFIG_MODULES=y\n# CONFIG_MODULE_SIG is not set\n"),
            f"{headers}/include/config/kernel.release": text_file(f"{kernel}\n"),
            f"{headers}/include/generated/utsrelease.h": text_file(
                f'#define UTS_RELEASE "{kernel}"\n'
            ),
        },
        symlinks={f"/lib/modules/{kernel}/build": headers},
    )


def build_os_part(
    release: OsRelease,
    upstream: list[AptSource],
    part: Path,
    key: ArchiveKey,
    downloads: Path,
) -> None:
    """Download the release's subset from ``upstream`` into ``part``/os/<name>/ and sign it."""
    if not upstream:
        raise ValueError(f"no upstream apt source for {release.name}")
    base = part.parent / f".apt-{release.name}-{os.getpid()}"
    base.mkdir(parents=True)
    keyring = base / ("archive-keys.asc" if release.vendor == "ubuntu" else "archive-keys.gpg")
    keyring.write_bytes(archive_keyring(release))
    driver = UBUNTU_ARCHIVE_DRIVER.get(release.name, ())
    slurm = UBUNTU_ARCHIVE_SLURM.get(release.name, ())
    if driver:
        upstream = [replace(s, components=(*s.components, RESTRICTED)) for s in upstream]
    apt = PrivateApt(
        base,
        [source.line(str(keyring)) for source in upstream],
        preferences=NO_KERNEL_PACKAGES,
        archives=downloads,
    )
    try:
        apt.run("update")
        seeds = seed_packages(release)
        wanted = apt.download_uris(*seeds)
        apt.run("install", "--download-only", "--yes", "--quiet", *seeds)
        if driver:
            # As gpufleet installs it, and with the kernel image its modules depend on.
            options = ("--no-install-recommends", "-o", "Dir::Etc::preferences=/dev/null")
            wanted |= apt.download_uris(*options, *driver)
            apt.run("install", "--download-only", "--yes", "--quiet", *options, *driver)
        if slurm:
            wanted |= apt.download_uris("--no-install-recommends", *slurm)
            apt.run(
                "install", "--download-only", "--yes", "--quiet", "--no-install-recommends", *slurm
            )
    finally:
        shutil.rmtree(base)
    repo = part / mirror_path(release)
    repo.mkdir(parents=True)
    for archive_name, url in wanted.items():
        # Pool names carry no epoch (apt's archive names do, as %3a); the URL quotes ~ and +.
        os.link(downloads / archive_name, repo / unquote(url.rsplit("/", 1)[1]))
    build_debs([linux_headers_package(platform.release())], repo, part / ".scratch")
    shutil.rmtree(part / ".scratch")
    vendor = release.vendor.capitalize()
    index_flat_repo(
        repo,
        key,
        {"Origin": vendor, "Label": vendor, "Suite": release.suite, "Codename": release.suite},
    )
