"""Debian root filesystems for test hosts, built with mmdebstrap and cached by recipe.

The cached tree is shared read-only by every host booted from it (it becomes the lower layer
of each host's overlay), so it holds only what all hosts have in common: nothing per host,
no machine-id, no apt source. The apt source of the local test mirror is written per host.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

DEBIAN_MIRROR = "http://deb.debian.org/debian"
SUITES = ("bookworm", "bullseye")

# What a plain Debian server has, plus what the tests drive it with (ssh, apt, systemd).
HOST_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "apt",
    "gnupg",
    "ca-certificates",
    "iproute2",
    "procps",
    "kmod",
    "curl",
    "wget",
    "less",
    "lsb-release",
    "sudo",
)

# Docker in the host needs rw cgroup v1 controllers; nspawn mounts them read-only on a
# hybrid-hierarchy machine, so remount them before docker/containerd start.
CGROUP_RW_UNIT = """\
[Unit]
Description=Make cgroup v1 controllers writable for container engines (gpufleet test host)
DefaultDependencies=no
After=local-fs.target
Before=containerd.service docker.service sysinit.target
ConditionPathIsReadWrite=!/sys/fs/cgroup/memory

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for d in /sys/fs/cgroup/*/; do \
mountpoint -q "$d" && mount -o remount,bind,rw "$d"; done; true'

[Install]
WantedBy=sysinit.target
"""

SSHD_CONFIG = """\
# gpufleet test host: root logs in with the throwaway key of the test run only.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""

# Timers that would run apt behind the tests' back and hold the dpkg lock.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "apt-daily.service",
    "apt-daily-upgrade.service",
)

# Written into the tree; part of the recipe hash so a change rebuilds the cache.
BAKED_FILES: dict[str, str] = {
    "etc/systemd/system/gpufleet-cgroup-rw.service": CGROUP_RW_UNIT,
    "etc/ssh/sshd_config.d/gpufleet-test.conf": SSHD_CONFIG,
    # No nameserver: the host resolves nothing, so nothing reaches outside by name.
    "etc/resolv.conf": "# gpufleet test host: no name resolution\n",
    "etc/machine-id": "",
    "etc/apt/sources.list": "# gpufleet test host: apt sources are in sources.list.d\n",
    "etc/fstab": "",
}
BAKED_SYMLINKS: dict[str, str] = {
    "etc/systemd/system/sysinit.target.wants/gpufleet-cgroup-rw.service": (
        "/etc/systemd/system/gpufleet-cgroup-rw.service"
    ),
    **{f"etc/systemd/system/{unit}": "/dev/null" for unit in MASKED_UNITS},
}
# Per-build leftovers that must not be shared by all hosts (the host's name and identity).
REMOVED_PATHS = ("etc/hostname", "var/lib/dbus/machine-id")


def recipe_digest(recipe: dict[str, object]) -> str:
    """Short, stable digest of a build recipe, used as the cache key."""
    encoded = json.dumps(recipe, sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def cached_build(
    cache_dir: Path,
    kind: str,
    recipe: dict[str, object],
    build: Callable[[Path], None],
    suffix: str = "",
) -> Path:
    """Return ``cache_dir/<kind>-<digest><suffix>``, building it with ``build`` if missing.

    ``build`` creates the given temporary path; it is renamed into place only when complete,
    so an interrupted build never looks cached.
    """
    target = cache_dir / f"{kind}-{recipe_digest(recipe)}{suffix}"
    with locked(cache_dir / f"{kind}.lock"):
        if target.exists():
            return target
        temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        _remove(temporary)
        try:
            build(temporary)
            temporary.rename(target)
        finally:
            _remove(temporary)
    return target


def mmdebstrap(suite: str, target: Path, packages: list[str], extra_args: list[str]) -> None:
    """Run mmdebstrap (minbase variant) from the Debian mirror, raising with its output."""
    if suite not in SUITES:
        raise ValueError(f"unsupported suite {suite!r}, expected one of {SUITES}")
    include = [f"--include={','.join(packages)}"] if packages else []
    command = ["mmdebstrap", "--quiet", "--variant=minbase", *include, *extra_args,
               suite, str(target), DEBIAN_MIRROR]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"mmdebstrap {suite} failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )


def _bake(root: Path) -> None:
    for relative in REMOVED_PATHS:
        _remove(root / relative)
    for relative, content in BAKED_FILES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(path)
        path.write_text(content)
    for relative, destination in BAKED_SYMLINKS.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(path)
        path.symlink_to(destination)


def build_rootfs(suite: str, cache_dir: Path) -> Path:
    """Return a cached Debian ``suite`` root filesystem for booting test hosts."""
    recipe: dict[str, object] = {
        "suite": suite,
        "mirror": DEBIAN_MIRROR,
        "packages": HOST_PACKAGES,
        "files": BAKED_FILES,
        "symlinks": BAKED_SYMLINKS,
        "removed": REMOVED_PATHS,
    }

    def build(target: Path) -> None:
        mmdebstrap(suite, target, list(HOST_PACKAGES), [])
        _bake(target)

    return cached_build(cache_dir, f"rootfs-{suite}", recipe, build)
