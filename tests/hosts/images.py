"""Docker images for test hosts, built as root filesystem tarballs (there is no registry).

A tarball is built once per recipe with mmdebstrap and loaded into a host's docker with
``docker import``; :func:`import_image` does that for a booted fleet host.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from tests.hosts.fleet import Fleet, TestHost
from tests.hosts.rootfs import DEBIAN_MIRROR, cached_build, mmdebstrap

# Nobody reads documentation inside a test image; leaving it out halves the tarball.
EXCLUDED_PATHS = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/locale/*",
    "/usr/share/info/*",
)
IMAGE_DIR_ON_HOST = "var/tmp"


def build_image_tarball(suite: str, cache_dir: Path, packages: list[str]) -> Path:
    """Return a cached tarball of a minimal Debian ``suite`` with ``packages`` installed."""
    wanted = sorted(set(packages))
    recipe: dict[str, object] = {
        "suite": suite,
        "mirror": DEBIAN_MIRROR,
        "packages": wanted,
        "excluded": EXCLUDED_PATHS,
    }
    extra_args = [f"--dpkgopt=path-exclude={pattern}" for pattern in EXCLUDED_PATHS]
    extra_args.append("--format=tar")

    def build(target: Path) -> None:
        mmdebstrap(suite, target, wanted, extra_args)

    return cached_build(cache_dir / "images", f"image-{suite}", recipe, build, suffix=".tar")


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
