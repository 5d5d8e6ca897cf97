"""Root filesystems of the test hosts' OS releases, built with mmdebstrap and cached by recipe.

mmdebstrap is given no mirror: it picks its default for the release's suite (Ubuntu's through
distro-info-data), and the apt sources it wrote into the new tree are read back before baking
replaces them. They are kept beside the tree (``upstream-sources.json``) as the *upstream* of
the release: what the subset mirror of testbed.os_mirror is built from. No registry host name
is written anywhere in the testbed, and none is part of a cache key.

The cached tree is shared read-only by every host booted from it (it becomes the lower layer
of each host's overlay), so it holds only what all hosts have in common: nothing per host,
no machine-id, no apt source. The apt source of the local test mirror is written per host.

Ubuntu's archive key is not on Debian 12: the public 2018 key is vendored in testbed/keys (its
.source.txt says where its bytes come from) and its fingerprint is checked before every use.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from testbed.os_releases import OS_RELEASES, OsRelease

# What a plain server of every release has, plus what the tests drive it with (ssh, apt,
# systemd). The names are the same in all six releases.
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

# Where the testbed reads Debian's archive keys (debian-archive-keyring, on every Debian 12).
DEBIAN_ARCHIVE_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# mmdebstrap picks a suite's vendor, and so its default mirror, from distro-info-data.
DISTRO_INFO = Path("/usr/share/distro-info")
# Ubuntu's archive key of 2018, which signs 20.04, 22.04 and 24.04 (see its .source.txt).
UBUNTU_ARCHIVE_KEY = Path(__file__).with_name("keys") / "ubuntu-archive-keyring-2018.asc"
UBUNTU_ARCHIVE_KEY_FINGERPRINT = "F6ECB3762474EDA9D21B7022871920D1991BC93C"

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
    # debootstrap and the installers leave dpkg's legacy "available" file, which mmdebstrap does
    # not make: dpkg before 1.20 (Ubuntu 20.04's) cannot --set-selections (apt-mark hold) without.
    "var/lib/dpkg/available": "",
}
BAKED_SYMLINKS: dict[str, str] = {
    "etc/systemd/system/sysinit.target.wants/gpufleet-cgroup-rw.service": (
        "/etc/systemd/system/gpufleet-cgroup-rw.service"
    ),
    **{f"etc/systemd/system/{unit}": "/dev/null" for unit in MASKED_UNITS},
}
# Per-build leftovers that must not be shared by all hosts (the host's name and identity), and
# the upstream apt sources (read back first): the hosts see the local test mirror only.
REMOVED_PATHS = (
    "etc/hostname",
    "var/lib/dbus/machine-id",
    "etc/apt/sources.list.d",
)
TREE = "root"
UPSTREAM_FILE = "upstream-sources.json"


@dataclass(frozen=True)
class AptSource:
    """One upstream archive suite as a built tree's apt sources name it (options dropped)."""

    uri: str
    suite: str
    components: tuple[str, ...]

    def line(self, signed_by: str) -> str:
        return f"deb [signed-by={signed_by}] {self.uri} {self.suite} {' '.join(self.components)}"


def recipe_digest(recipe: dict[str, object]) -> str:
    """Short, stable digest of a build recipe, used as the cache key."""
    encoded = json.dumps(recipe, sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def default_cache_dir() -> Path:
    """Where the testbed caches root filesystems, images and repositories (GPUFLEET_TEST_CACHE)."""
    return Path(os.environ.get("GPUFLEET_TEST_CACHE", "/var/cache/gpufleet-test"))


def os_release(release: OsRelease | str) -> OsRelease:
    """``release`` itself, or the OsRelease of that name (a clear error for an unknown one)."""
    if isinstance(release, OsRelease):
        return release
    try:
        return OS_RELEASES[release]
    except KeyError:
        raise ValueError(
            f"unknown OS release {release!r}, expected one of {', '.join(OS_RELEASES)}"
        ) from None


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
        return built_atomically(target, build)


def built_atomically(target: Path, build: Callable[[Path], None]) -> Path:
    """``target``, built with ``build`` through a temporary sibling renamed into place unless it
    exists: an interrupted build never looks built. Callers hold the cache's lock."""
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


# --------------------------------------------------------------------------------------------
# Archive keys
# --------------------------------------------------------------------------------------------


def key_fingerprints(key_file: Path) -> list[str]:
    """Fingerprints of the primary keys in ``key_file`` (armored or binary), read by gpg."""
    with tempfile.TemporaryDirectory(prefix="gpufleet-gpg-") as home:
        result = subprocess.run(
            ["gpg", "--homedir", home, "--batch", "--with-colons", "--show-keys", str(key_file)],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"gpg cannot read {key_file}:\n{result.stderr}")
    fingerprints = []
    primary = False
    for line in result.stdout.splitlines():
        fields = line.split(":")
        if fields[0] in ("pub", "sub"):
            primary = fields[0] == "pub"
        elif fields[0] == "fpr" and primary:
            fingerprints.append(fields[9])
            primary = False
    return fingerprints


def checked_ubuntu_key() -> bytes:
    """The vendored Ubuntu archive key's bytes, after gpg confirms it is that key and only it."""
    content = UBUNTU_ARCHIVE_KEY.read_bytes()
    with tempfile.TemporaryDirectory(prefix="gpufleet-key-") as scratch:
        # Check the very bytes that are used, not the file, which could change in between.
        copy = Path(scratch) / UBUNTU_ARCHIVE_KEY.name
        copy.write_bytes(content)
        found = key_fingerprints(copy)
    if found != [UBUNTU_ARCHIVE_KEY_FINGERPRINT]:
        raise RuntimeError(
            f"{UBUNTU_ARCHIVE_KEY} is not Ubuntu's 2018 archive key: gpg reads the keys "
            f"{found or 'none'}, expected only {UBUNTU_ARCHIVE_KEY_FINGERPRINT}. Restore it as "
            f"{UBUNTU_ARCHIVE_KEY.with_suffix('.source.txt').name} describes."
        )
    return content


def archive_keyring(release: OsRelease) -> bytes:
    """The keys the release's upstream archive is verified with (Debian's or Ubuntu's)."""
    if release.vendor == "ubuntu":
        return checked_ubuntu_key()
    if release.vendor == "debian":
        return DEBIAN_ARCHIVE_KEYRING.read_bytes()
    raise ValueError(f"no archive key known for vendor {release.vendor!r}")


@contextmanager
def keyring_directory(release: OsRelease) -> Iterator[Path]:
    """A temporary directory holding only the release's archive keys, readable by apt's _apt."""
    suffix = ".asc" if release.vendor == "ubuntu" else ".gpg"
    with tempfile.TemporaryDirectory(prefix="gpufleet-keyring-") as directory:
        path = Path(directory)
        path.chmod(0o755)
        keyring = path / f"{release.vendor}-archive{suffix}"
        keyring.write_bytes(archive_keyring(release))
        keyring.chmod(0o644)
        yield path


# --------------------------------------------------------------------------------------------
# Apt sources of a built tree
# --------------------------------------------------------------------------------------------


def parse_one_line_sources(text: str) -> list[AptSource]:
    """``deb`` lines of a sources.list (options in brackets dropped; deb-src ignored)."""
    sources = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line[len("deb ") :])
        uri, suite, *components = line.split()
        sources.append(AptSource(uri.rstrip("/"), suite, tuple(components)))
    return sources


def parse_deb822_sources(text: str) -> list[AptSource]:
    """The ``deb`` entries of a deb822 .sources file (each URI and suite combination)."""
    sources = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        current = ""
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and current:
                fields[current] += " " + line.strip()
                continue
            name, _, value = line.partition(":")
            current = name.strip().lower()
            fields[current] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
            continue
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                components = tuple(fields.get("components", "").split())
                sources.append(AptSource(uri.rstrip("/"), suite, components))
    return sources


def read_apt_sources(root: Path) -> list[AptSource]:
    """The apt sources of the tree at ``root``: sources.list and sources.list.d/*.list|.sources."""
    apt = root / "etc/apt"
    sources = []
    if (apt / "sources.list").is_file():
        sources += parse_one_line_sources((apt / "sources.list").read_text())
    parts = apt / "sources.list.d"
    for path in sorted(parts.glob("*")) if parts.is_dir() else []:
        if path.suffix == ".list":
            sources += parse_one_line_sources(path.read_text())
        elif path.suffix == ".sources":
            sources += parse_deb822_sources(path.read_text())
    return sources


def upstream_sources(rootfs: Path) -> list[AptSource]:
    """The apt sources mmdebstrap used for the cached tree ``rootfs`` (build_rootfs's result)."""
    entries = json.loads((rootfs.parent / UPSTREAM_FILE).read_text())
    return [AptSource(e["uri"], e["suite"], tuple(e["components"])) for e in entries]


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def check_distro_info(release: OsRelease) -> None:
    """Refuse a release this machine's distro-info-data does not know: mmdebstrap would take
    its suite for a Debian one and fetch it from Debian's mirror."""
    table = DISTRO_INFO / f"{release.vendor}.csv"
    try:
        rows = [line.split(",") for line in table.read_text().splitlines()[1:]]
    except OSError:
        rows = []
    if not any(len(row) > 2 and row[2] == release.suite for row in rows):
        raise RuntimeError(
            f"{table} does not list {release.suite} ({release.name}): install or upgrade "
            "distro-info-data (bash .ci/setup does), so that mmdebstrap picks its mirror"
        )


def mmdebstrap(
    release: OsRelease, target: Path, packages: list[str], extra_args: list[str]
) -> None:
    """Run mmdebstrap (minbase) for ``release`` from its vendor's default mirror.

    The archive is verified with the release's own keys only (``--keyring``); the output of a
    failed build is in the exception.
    """
    check_distro_info(release)
    include = [f"--include={','.join(packages)}"] if packages else []
    with keyring_directory(release) as keyring:
        command = [
            "mmdebstrap", "--quiet", "--variant=minbase", f"--keyring={keyring}",
            f"--components={','.join(release.components)}", *include, *extra_args,
            release.suite, str(target),
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"mmdebstrap of {release.name} ({release.suite}) failed ({result.returncode}):\n"
            f"{result.stderr[-4000:]}"
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
    (root / "etc/apt/sources.list.d").mkdir(mode=0o755)


def build_rootfs(release: OsRelease | str, cache_dir: Path) -> Path:
    """Return the cached root filesystem of ``release`` for booting test hosts.

    The result is ``<cache_dir>/rootfs-<name>-<digest>/root``; beside it,
    ``upstream-sources.json`` holds the apt sources it was built from (upstream_sources()).
    """
    release = os_release(release)
    recipe: dict[str, object] = {
        "release": [release.name, release.vendor, release.suite, release.components],
        "packages": HOST_PACKAGES,
        "files": BAKED_FILES,
        "symlinks": BAKED_SYMLINKS,
        "removed": REMOVED_PATHS,
        "layout": [TREE, UPSTREAM_FILE],
    }
    if release.vendor == "ubuntu":
        recipe["key"] = UBUNTU_ARCHIVE_KEY_FINGERPRINT

    def build(target: Path) -> None:
        target.mkdir(parents=True)
        root = target / TREE
        mmdebstrap(release, root, list(HOST_PACKAGES), [])
        sources = read_apt_sources(root)
        if not sources:
            raise RuntimeError(f"mmdebstrap left no apt source in the {release.name} tree")
        (target / UPSTREAM_FILE).write_text(
            json.dumps([asdict(source) for source in sources], indent=2) + "\n"
        )
        _bake(root)

    entry = cached_build(cache_dir, f"rootfs-{release.name}", recipe, build)
    return entry / TREE
