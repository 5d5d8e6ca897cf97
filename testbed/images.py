"""Docker images for test hosts, built as root filesystem tarballs (there is no registry).

A tarball is built once per recipe with mmdebstrap and loaded into a host's docker with
``docker import``; :func:`import_image` does that for a booted fleet host.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

from testbed.fleet import Fleet, TestHost
from testbed.os_releases import OS_RELEASES, OsRelease
from testbed.rootfs import UBUNTU_ARCHIVE_KEY_FINGERPRINT, cached_build, mmdebstrap, os_release

# Nobody reads documentation inside a test image; leaving it out halves the tarball. The manN
# directories stay: Ubuntu 20.04's dash links its sh.1.gz diversion there while it is installed.
EXCLUDED_PATHS = (
    "/usr/share/doc/*",
    "/usr/share/man/*/*",
    "/usr/share/locale/*",
    "/usr/share/info/*",
)
IMAGE_DIR_ON_HOST = "var/tmp"

# The release the TensorFlow image is built from.
TENSORFLOW_IMAGE_OS = OS_RELEASES["debian12"]
# A CPU-only TensorFlow that runs on Debian 12's Python 3.11 (TF 2.9 needs 3.7 to 3.10): the smoke
# test runs in it for real and fails for the honest reason that it has no GPU.
TENSORFLOW_REQUIREMENT = "tensorflow-cpu==2.15.1"
# pip matches platform tags literally: every glibc up to 2.31 (that of Debian 11 and Ubuntu 20.04,
# the oldest releases, so the wheels run on all) and the legacy manylinux names.
WHEEL_PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(31, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)


def build_image_tarball(
    release: OsRelease | str,
    cache_dir: Path,
    packages: list[str],
    pip_requirements: list[str] | None = None,
) -> Path:
    """Return a cached tarball of a minimal ``release`` with ``packages`` installed.

    Built from the release's default mirror, as its root filesystem is (testbed.rootfs).
    ``pip_requirements`` are installed from PyPI for the image's ``python3`` (which
    ``packages`` must then include) by the machine building it: only it reaches PyPI.
    """
    release = os_release(release)
    wanted = sorted(set(packages))
    recipe: dict[str, object] = {
        "release": [release.name, release.vendor, release.suite, release.components],
        "packages": wanted,
        "excluded": EXCLUDED_PATHS,
    }
    if release.vendor == "ubuntu":
        recipe["key"] = UBUNTU_ARCHIVE_KEY_FINGERPRINT
    extra_args = [f"--dpkgopt=path-exclude={pattern}" for pattern in EXCLUDED_PATHS]
    extra_args.append("--format=tar")
    if pip_requirements:
        recipe["pip"] = pip_requirements
        extra_args.append(f"--customize-hook={pip_install_hook(release, pip_requirements)}")

    def build(target: Path) -> None:
        mmdebstrap(release, target, wanted, extra_args)

    return cached_build(cache_dir / "images", f"image-{release.name}", recipe, build, suffix=".tar")


def pip_install_hook(release: OsRelease, requirements: list[str]) -> str:
    """An mmdebstrap hook (``$1`` is the new root) that installs ``requirements`` with this
    interpreter's pip into the site directory of the release's python3, as binary wheels for it."""
    python = release.python
    target = f"/usr/local/lib/python{python}/dist-packages"
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir",
        "--disable-pip-version-check", "--only-binary=:all:", "--implementation=cp",
        f"--python-version={python}", f"--abi=cp{python.replace('.', '')}",
        *(f"--platform={platform}" for platform in WHEEL_PLATFORMS), *requirements,
    ]  # fmt: skip
    return f'{shlex.join(command)} --target="$1"{shlex.quote(target)}'


def build_tensorflow_image_tarball(cache_dir: Path) -> Path:
    """A Debian 12 image with python3 and CPU-only TensorFlow (cached like the others)."""
    return build_image_tarball(
        TENSORFLOW_IMAGE_OS, cache_dir, ["python3"], pip_requirements=[TENSORFLOW_REQUIREMENT]
    )


def import_image(fleet: Fleet, host: TestHost, tarball: Path, tag: str) -> str:
    """``docker import`` ``tarball`` on ``host`` as ``tag``; return the image id."""
    on_host = Path(IMAGE_DIR_ON_HOST) / tarball.name
    # The host's root is a directory here: copying beats streaming it through ssh.
    shutil.copyfile(tarball, host.root / on_host)
    path = shlex.quote(f"/{on_host}")
    command = f"docker import {path} {shlex.quote(tag)} && rm -f {path}"
    result = fleet.ssh(host, command)
    if result.returncode != 0:
        raise RuntimeError(f"docker import on {host.name} failed:\n{result.stdout}{result.stderr}")
    return result.stdout.strip()
