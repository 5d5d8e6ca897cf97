"""
Signed apt repositories and pinned, held packages.

Repositories get a keyring of their own under /etc/apt/keyrings and a `signed-by` source line:
never apt-key, never trusted=yes. The key is fetched on the controller and its fingerprint checked
against the pinned one before anything reaches the host.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import posixpath
import shlex
from fnmatch import fnmatchcase
from pathlib import Path
from urllib.parse import urlparse

import requests
from pyinfra import host
from pyinfra.api import operation
from pyinfra.api.exceptions import DeployError

from deploys.files import upload_changed
from facts import snapshot
from facts.apt import DebPackageState, DebPackageStates

KEYRING_DIR = "/etc/apt/keyrings"
SOURCES_DIR = "/etc/apt/sources.list.d"
PUBLIC_KEY_PACKET_TAG = 6

APT_GET = (
    "DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=600"
    " -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
)
# Package changes run one at a time per host (this lock), as transient systemd units.
TRANSACTION_LOCK = "/run/lock/gpufleet-apt.lock"
TRANSACTION_LOG = "/var/log/gpufleet/apt.log"


class RepositoryKeyError(DeployError):
    """The repository key could not be fetched or is not the pinned key."""


def dearmor(armored: bytes) -> bytes:
    """The binary OpenPGP packets of an ASCII-armored key (what `gpg --dearmor` writes)."""
    lines = armored.decode("ascii", errors="replace").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("-----BEGIN PGP"))
        blank = next(i for i in range(start + 1, len(lines)) if not lines[i].strip())
    except StopIteration as error:
        raise ValueError("no ASCII-armored OpenPGP block found") from error
    body = []
    for line in lines[blank + 1 :]:
        # "=XXXX" is the CRC-24 checksum line; the END marker closes the block.
        if line.startswith(("=", "-----END PGP")):
            break
        body.append(line.strip())
    try:
        return base64.b64decode("".join(body), validate=True)
    except binascii.Error as error:
        raise ValueError(f"armored key body is not base64: {error}") from error


def _first_packet(data: bytes) -> tuple[int, bytes]:
    """(tag, body) of the first OpenPGP packet (RFC 4880 section 4.2, old and new formats)."""
    if not data or not data[0] & 0x80:
        raise ValueError("not an OpenPGP packet")
    header = data[0]
    if header & 0x40:  # new format
        tag = header & 0x3F
        first = data[1]
        if first < 192:
            length, offset = first, 2
        elif first < 224:
            length, offset = ((first - 192) << 8) + data[2] + 192, 3
        elif first == 255:
            length, offset = int.from_bytes(data[2:6], "big"), 6
        else:
            raise ValueError("partial-length key packets are not valid")
    else:
        tag = (header >> 2) & 0x0F
        size = {0: 1, 1: 2, 2: 4}.get(header & 0x03)
        if size is None:
            raise ValueError("indeterminate-length key packets are not supported")
        length, offset = int.from_bytes(data[1 : 1 + size], "big"), 1 + size
    return tag, data[offset : offset + length]


def key_fingerprint(keyring: bytes) -> str:
    """The v4 fingerprint of the primary key in a binary keyring (what apt and gpg show)."""
    tag, body = _first_packet(keyring)
    if tag != PUBLIC_KEY_PACKET_TAG:
        raise ValueError(f"first OpenPGP packet is tag {tag}, not a public key")
    if body[:1] != b"\x04":
        raise ValueError(f"public key version {body[0]} is not supported (only v4)")
    digest = hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body, usedforsecurity=False)
    return digest.hexdigest().upper()


@functools.cache
def _fetch(location: str) -> bytes:
    parsed = urlparse(location)
    if parsed.scheme in ("http", "https"):
        response = requests.get(location, timeout=30)
        response.raise_for_status()
        return response.content
    return Path(parsed.path if parsed.scheme == "file" else location).read_bytes()


def fetch_keyring(data_key: str, location: str, fingerprint: str) -> bytes:
    """
    The binary keyring at `location` (URL or controller path), refused unless its primary key
    has the pinned fingerprint.
    """
    try:
        raw = _fetch(location)
    except (OSError, requests.RequestException) as error:
        raise RepositoryKeyError(
            f"{data_key} = {location!r}: cannot fetch the key: {error}"
        ) from error
    try:
        keyring = dearmor(raw) if raw.lstrip().startswith(b"-----BEGIN PGP") else raw
        found = key_fingerprint(keyring)
    except ValueError as error:
        raise RepositoryKeyError(
            f"{data_key} = {location!r} is not an OpenPGP public key: {error}"
        ) from error
    wanted = fingerprint.replace(" ", "").upper()
    if found != wanted:
        raise RepositoryKeyError(
            f"{data_key} = {location!r} holds key {found}, not the pinned {wanted}; if the "
            f"repository's key really changed, set the matching *_key_fingerprint in your inventory"
        )
    return keyring


def source_line(url: str, keyring_path: str) -> str:
    """A flat-repository source line (NVIDIA's CUDA and container repos are flat: suite '/')."""
    return f"deb [signed-by={keyring_path}] {url} /\n"


def repository_files(repository: str) -> tuple[str, str]:
    """The repository's keyring and source list paths."""
    return f"{KEYRING_DIR}/{repository}.gpg", f"{SOURCES_DIR}/{repository}.list"


@operation()
def signed_repository(repository: str, url: str, keyring: bytes):
    """
    Add a flat apt repository signed by its own keyring.

    + repository: file name stem for /etc/apt/keyrings/<name>.gpg and sources.list.d/<name>.list
    + url: repository URL (a flat repo: `deb <url> /`)
    + keyring: binary OpenPGP keyring (already checked against the pinned fingerprint)
    """
    keyring_path, sources_path = repository_files(repository)
    files = {keyring_path: keyring, sources_path: source_line(url, keyring_path).encode()}
    commands = list(upload_changed(files, "644"))
    if not commands:
        host.noop(f"apt repository {repository} is already configured")
        return
    yield from commands


def transaction(steps: list[str], log: str = TRANSACTION_LOG) -> str:
    """
    The shell steps of a package change, run to their end whatever happens to the controller.

    Killing pyinfra (or losing its SSH connection) would otherwise kill apt halfway, between a
    held package's change and its hold. On systemd hosts the steps run as a transient unit that
    the controller only waits for; TRANSACTION_LOCK keeps them one at a time (a killed run's
    transaction finishes first). The output is kept in ``log`` and printed, so a failure reads
    as if it ran in the foreground.
    """
    script = " && ".join(steps)
    quoted_log = shlex.quote(log)
    locked = (
        f"flock {TRANSACTION_LOCK} /bin/sh -c {shlex.quote(f'{{ {script}; }} >{quoted_log} 2>&1')}"
    )
    return (
        f"mkdir -p {shlex.quote(posixpath.dirname(log))} && "
        "if [ -d /run/systemd/system ]; then "
        # A unit name of its own: a finished unit may stay loaded for a moment after --wait.
        'systemd-run --quiet --wait --collect --unit="gpufleet-apt-$(date +%s%N)" '
        f"--description='gpufleet package change' {locked}; "
        f"else {locked}; fi; "
        f"status=$?; cat {quoted_log}; exit $status"
    )


def version_satisfied(state: DebPackageState | None, version_pattern: str | None) -> bool:
    if state is None or not state["installed"]:
        return False
    return version_pattern is None or fnmatchcase(state["version"], version_pattern)


def package_spec(name: str, version_pattern: str | None) -> str:
    return shlex.quote(name if version_pattern is None else f"{name}={version_pattern}")


@operation()
def pinned_packages(packages: dict[str, str | None], hold: bool = True):
    """
    Install packages at pinned versions and (optionally) hold them.

    + packages: name -> apt version pattern (e.g. ``470.182.03-*``, matched like apt matches it),
      or None for any version
    + hold: apt-mark hold the packages so unattended upgrades cannot move them

    Held packages are changed with --allow-change-held-packages and held again in the same
    transaction, which runs to its end even when the controller is killed: an interrupted run
    leaves each package on its old or its new version, held.
    """
    states = snapshot.current(DebPackageStates, packages=sorted(packages))
    to_install = [
        name
        for name, pattern in packages.items()
        if not version_satisfied(states.get(name), pattern)
    ]
    to_hold = [
        name for name in packages if hold and (name in to_install or not states[name]["held"])
    ]
    if not to_install and not to_hold:
        host.noop(f"{len(packages)} package(s) already at their pinned versions")
        return

    hold_steps = (
        ["apt-mark hold " + " ".join(shlex.quote(name) for name in to_hold)] if to_hold else []
    )
    if not to_install:
        yield from hold_steps
        return
    specs = " ".join(package_spec(name, packages[name]) for name in to_install)
    yield transaction(
        [
            # Finish whatever an interrupted earlier run left half-configured.
            "dpkg --configure -a",
            f"{APT_GET} update",
            f"{APT_GET} install --no-install-recommends --allow-downgrades"
            f" --allow-change-held-packages {specs}",
            *hold_steps,
        ]
    )
