"""
Vendor artifacts that hosts cannot fetch themselves (NVIDIA's CUDA runfile, a cuDNN archive, a
`docker save` archive of a TensorFlow image), fetched on the controller into a cache.

pyinfra plans each host in turn on the controller: whichever host first needs an artifact makes
the controller fetch it, and every later host of the run, and later runs, reuse the cached file.
The cache is content-addressed (cache_dir/<sha256>): a file is renamed in only once its digest is
known, so a cached file is trusted without reading it again. Nothing from an artifact is executed
or unpacked here.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

import click
import requests
from pyinfra.api.exceptions import DeployError

from gpufleet.repository_keys import fetch_failure
from gpufleet.stack.installers import SHA256
from gpufleet.stack.urls import redact

CHUNK = 64 * 1024  # small enough for a progress line at every 10% of a 1 MB file
# (connect, read) seconds; the read timeout is between two reads, not for the whole file.
TIMEOUT = (15, 60)
MiB = 1024 * 1024

logger = logging.getLogger("pyinfra")


@dataclass(frozen=True)
class Artifact:
    url_key: str  # inventory key naming its location, e.g. "cuda_runfile_url"
    sha256_key: str  # inventory key pinning its digest, e.g. "cuda_runfile_sha256"
    url: str  # https://, http://, file:// URL, or a path on the controller
    sha256: str  # 64 lower-case hex digits


class ArtifactError(DeployError):
    """An artifact could not be fetched, or is not the file its pinned digest names."""


# URL -> the sha256 of what it served in this run, so that a URL is fetched once per run even
# when hosts pin different digests for it. pyinfra plans hosts in gevent greenlets (its CLI patches
# threading first): a lock per URL keeps a second host from fetching while the first one does.
_fetched: dict[str, str] = {}
_locks: dict[str, threading.Lock] = {}
_locks_lock = threading.Lock()


def forget_fetches() -> None:
    """Forget what this process fetched (for tests: as if a new run began)."""
    with _locks_lock:
        _fetched.clear()
        _locks.clear()


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/gpufleet/artifacts, else ~/.cache/gpufleet/artifacts."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gpufleet" / "artifacts"


def _shown(artifact: Artifact) -> str:
    return f"{artifact.url_key} = {redact(artifact.url)!r}"


def _cached_path(artifact: Artifact, cache_dir: Path) -> Path:
    # The digest becomes a file name: anything but hex digits could name another file.
    if not SHA256.fullmatch(artifact.sha256):
        raise ArtifactError(
            f"{artifact.sha256_key} = {artifact.sha256!r} is not a sha256 digest; pin the 64 "
            f"lower-case hex digits the vendor publishes for {_shown(artifact)}"
        )
    return cache_dir / artifact.sha256


def _local_source(artifact: Artifact) -> Path | None:
    """The controller file a file:// URL or a path names; None for an http(s) URL."""
    parts = urlsplit(artifact.url)
    if parts.scheme in ("http", "https"):
        return None
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme:
        raise ArtifactError(
            f"{_shown(artifact)} has scheme {parts.scheme!r}; use an https://, http:// or "
            "file:// URL, or a path on the controller"
        )
    return Path(artifact.url)


def human_size(count: int | None) -> str:
    """A byte count as people read it: 3.0 GiB, 2.0 MiB, 512 bytes."""
    if count is None:
        return "size unknown"
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def cached(artifact: Artifact, cache_dir: Path) -> bool:
    """Whether cache_dir/<sha256> is present (fetch would not touch the network)."""
    return _cached_path(artifact, cache_dir).is_file()


def artifact_size(artifact: Artifact, cache_dir: Path) -> int | None:
    """
    For dry runs: the cached file's size, else the server's Content-Length from a HEAD (or the
    local file's size for file:/paths), None when unknown; never downloads the body, never raises
    for network errors (returns None).
    """
    target = _cached_path(artifact, cache_dir)
    if target.is_file():
        return target.stat().st_size
    source = _local_source(artifact)
    try:
        if source is not None:
            return source.stat().st_size
        # Vendors' download links redirect to a CDN; HEAD does not follow redirects by default.
        response = requests.head(artifact.url, timeout=TIMEOUT, allow_redirects=True)
        response.raise_for_status()
    except (OSError, requests.RequestException):
        return None
    length = response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def fetch_artifact(artifact: Artifact, cache_dir: Path) -> Path:
    """The verified file, cache_dir/<sha256>."""
    target = _cached_path(artifact, cache_dir)
    with _locks_lock:
        lock = _locks.setdefault(artifact.url, threading.Lock())
    with lock:
        if target.is_file():
            return target
        actual = _fetched.get(artifact.url)
        # Fetched again when it matched: into another cache dir, or the file has been removed.
        if actual is None or actual == artifact.sha256:
            actual = _download(artifact, cache_dir)
            _fetched[artifact.url] = actual
    if actual != artifact.sha256:
        raise ArtifactError(
            f"{artifact.sha256_key} = {artifact.sha256!r} does not match {_shown(artifact)}: "
            f"its sha256 is {actual}; set {artifact.sha256_key} to the digest the vendor "
            f"publishes for this file, or fix {artifact.url_key}"
        )
    logger.info(f"{_name(artifact)}: sha256 {actual} verified, cached as {target}")
    return target


def _name(artifact: Artifact) -> str:
    return PurePosixPath(urlsplit(artifact.url).path).name or artifact.url_key


def _download(artifact: Artifact, cache_dir: Path) -> str:
    """Fetch into cache_dir/partial, then rename to cache_dir/<its sha256>: that digest."""
    partial = cache_dir / "partial" / f"{hashlib.sha256(artifact.url.encode()).hexdigest()}.part"
    # Cached files are trusted unread: only this user may put files there.
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial.parent.mkdir(mode=0o700, exist_ok=True)
    source = _local_source(artifact)
    digest = hashlib.sha256()
    try:
        if source is None:
            _get(artifact, partial, digest)
        else:
            with source.open("rb") as reader, partial.open("wb") as out:
                _copy(artifact, _chunks(reader), out, digest, source.stat().st_size, 0)
    except (OSError, requests.RequestException) as error:
        remedy = (
            "a partial download resumes on the next try; or fetch the file yourself and set "
            f"{artifact.url_key} to its path on the controller"
            if source is None
            else f"set {artifact.url_key} to where the file is on the controller"
        )
        # Not chained: the error's message and traceback may hold the URL's credentials.
        raise ArtifactError(
            f"{_shown(artifact)}: cannot fetch it: {fetch_failure(artifact.url, error)}; {remedy}"
        ) from None
    partial.chmod(0o644)
    # Kept under its real digest even when that is not the pin: a host pinning it reuses it.
    partial.replace(cache_dir / digest.hexdigest())
    return digest.hexdigest()


def _get(artifact: Artifact, partial: Path, digest: hashlib._Hash) -> None:
    have = partial.stat().st_size if partial.exists() else 0
    # Ranges count bytes as sent: a compressed transfer would not resume where the part ends.
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    with requests.get(artifact.url, headers=headers, stream=True, timeout=TIMEOUT) as response:
        if response.status_code == 416:  # nothing after `have`: the part is whole (verified)
            with partial.open("rb") as reader:
                for chunk in _chunks(reader):
                    digest.update(chunk)
            return
        response.raise_for_status()
        if response.status_code != 206:  # the server sends the whole file: start over
            have = 0
        length = response.headers.get("Content-Length", "")
        total = have + int(length) if length.isdigit() else None
        with partial.open("r+b" if have else "wb") as out:
            if have:  # hash what was fetched before, then append the rest
                for chunk in _chunks(out):
                    digest.update(chunk)
            _copy(artifact, response.iter_content(CHUNK), out, digest, total, have)


def _chunks(reader: BinaryIO) -> Iterator[bytes]:
    while chunk := reader.read(CHUNK):
        yield chunk


def _copy(
    artifact: Artifact,
    chunks: Iterable[bytes],
    out: BinaryIO,
    digest: hashlib._Hash,
    total: int | None,
    have: int,
) -> None:
    resuming = f", resuming at {human_size(have)}" if have else ""
    logger.info(
        f"fetching {redact(artifact.url)} ({human_size(total)}{resuming}) into the artifact cache"
    )
    with _progress(_name(artifact), total, have) as advance:
        for chunk in chunks:
            out.write(chunk)
            digest.update(chunk)
            advance(len(chunk))


@contextlib.contextmanager
def _progress(name: str, total: int | None, done: int) -> Iterator[Callable[[int], None]]:
    """A bar on a terminal; else a log line at every 10% (or 100 MiB without a known size)."""
    if total and sys.stderr.isatty():
        label = f"{name} ({human_size(total)})"
        with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
            bar.update(done)
            yield bar.update
        return

    def mark(count: int) -> int:  # the tenths done, or the 100 MiB fetched
        return count * 10 // total if total else count // (100 * MiB)

    state = {"done": done, "logged": mark(done)}

    def advance(count: int) -> None:
        state["done"] += count
        if mark(state["done"]) > state["logged"]:
            state["logged"] = mark(state["done"])
            if total:
                logger.info(f"{name}: {state['logged'] * 10}% of {human_size(total)}")
            else:
                logger.info(f"{name}: {human_size(state['done'])} fetched")

    yield advance
