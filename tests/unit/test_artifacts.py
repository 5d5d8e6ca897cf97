"""Vendor artifacts fetched into the controller's cache, over HTTP on loopback or from disk."""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.server
import io
import logging
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gpufleet import artifacts
from gpufleet.artifacts import (
    Artifact,
    ArtifactError,
    artifact_size,
    cached,
    default_cache_dir,
    fetch_artifact,
)
from tests.unit.local_http import serving

BODY = bytes(range(256)) * 3907  # 1,000,192 bytes, no two 64 KiB chunks alike in position
BODY_SHA256 = hashlib.sha256(BODY).hexdigest()
WRONG_SHA256 = "0" * 64


@dataclass
class Served:
    """What the test server serves at /cuda.run (anything else is 404), and what it was asked."""

    body: bytes = BODY
    drop_after: int | None = None  # the next GET is cut after this many bytes of the body
    ranges: list[str | None] = field(default_factory=list)  # each GET's Range header
    heads: int = 0
    sent: int = 0  # bytes of the body sent, all GETs together


def handler(served: Served) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_HEAD(self) -> None:
            served.heads += 1
            if self.path != "/cuda.run":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(served.body)))
            self.end_headers()

        def do_GET(self) -> None:
            if self.path != "/cuda.run":
                self.send_error(404)
                return
            wanted = self.headers.get("Range")
            served.ranges.append(wanted)
            start = int(wanted.removeprefix("bytes=").rstrip("-")) if wanted else 0
            if start >= len(served.body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(served.body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            part = served.body[start:]
            self.send_response(206 if wanted else 200)
            if wanted:
                self.send_header(
                    "Content-Range", f"bytes {start}-{len(served.body) - 1}/{len(served.body)}"
                )
            self.send_header("Content-Length", str(len(part)))
            self.end_headers()
            if served.drop_after is not None:
                part, served.drop_after = part[: served.drop_after], None
                self.close_connection = True
            self.wfile.write(part)
            served.sent += len(part)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture(autouse=True)
def new_run() -> Iterator[None]:
    """Each test starts as a new pyinfra run would: nothing fetched yet in this process."""
    artifacts.forget_fetches()
    yield
    artifacts.forget_fetches()


@pytest.fixture
def served() -> Served:
    return Served()


@pytest.fixture
def server(served: Served) -> Iterator[str]:
    """The server's address, host:port."""
    with serving(handler(served)) as address:
        yield address


def runfile(url: str, sha256: str = BODY_SHA256) -> Artifact:
    return Artifact("cuda_runfile_url", "cuda_runfile_sha256", url, sha256)


def test_fetches_into_the_cache_once(server: str, served: Served, tmp_path: Path) -> None:
    artifact = runfile(f"http://{server}/cuda.run")
    assert not cached(artifact, tmp_path)
    path = fetch_artifact(artifact, tmp_path)
    assert path == tmp_path / BODY_SHA256
    assert path.read_bytes() == BODY
    assert path.stat().st_mode & 0o777 == 0o644
    assert tmp_path.stat().st_mode & 0o777 == 0o700
    assert list((tmp_path / "partial").iterdir()) == []
    assert cached(artifact, tmp_path)
    # Another host of the same run, then a later run: the cache answers.
    assert fetch_artifact(artifact, tmp_path) == path
    artifacts.forget_fetches()
    assert fetch_artifact(artifact, tmp_path) == path
    assert served.ranges == [None]


def test_hosts_planned_at_once_fetch_once(server: str, served: Served, tmp_path: Path) -> None:
    artifact = runfile(f"http://{server}/cuda.run")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        paths = set(pool.map(lambda _: fetch_artifact(artifact, tmp_path), range(8)))
    assert paths == {tmp_path / BODY_SHA256}
    assert served.ranges == [None]


def test_a_url_with_credentials_is_fetched(server: str, served: Served, tmp_path: Path) -> None:
    path = fetch_artifact(runfile(f"http://user:secret@{server}/cuda.run"), tmp_path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == BODY_SHA256


@pytest.mark.parametrize("first", ["right pin", "wrong pin"])
def test_a_wrong_pin_is_refused_without_another_fetch(
    server: str, served: Served, tmp_path: Path, first: str
) -> None:
    url = f"http://user:secret@{server}/cuda.run"
    right, wrong = runfile(url), runfile(url, WRONG_SHA256)
    if first == "right pin":
        fetch_artifact(right, tmp_path)
    with pytest.raises(ArtifactError) as raised:
        fetch_artifact(wrong, tmp_path)
    assert str(raised.value) == (
        f"cuda_runfile_sha256 = '{WRONG_SHA256}' does not match cuda_runfile_url = "
        f"'http://***@{server}/cuda.run': its sha256 is {BODY_SHA256}; set cuda_runfile_sha256 "
        "to the digest the vendor publishes for this file, or fix cuda_runfile_url"
    )
    # Kept under its real digest, which the right pin finds; nothing under the wrong one.
    assert fetch_artifact(right, tmp_path).read_bytes() == BODY
    assert not (tmp_path / WRONG_SHA256).exists()
    assert served.ranges == [None]


def test_an_interrupted_fetch_resumes(server: str, served: Served, tmp_path: Path) -> None:
    served.drop_after = len(BODY) // 2
    artifact = runfile(f"http://{server}/cuda.run")
    with pytest.raises(ArtifactError, match=r"^cuda_runfile_url = .*: cannot fetch it: "):
        fetch_artifact(artifact, tmp_path)
    [part] = (tmp_path / "partial").iterdir()
    have = part.stat().st_size
    assert 0 < have <= len(BODY) // 2
    assert fetch_artifact(artifact, tmp_path).read_bytes() == BODY
    assert served.ranges == [None, f"bytes={have}-"]
    assert served.sent == len(BODY) // 2 + len(BODY) - have


def test_a_whole_part_is_verified_without_fetching_it_again(
    server: str, served: Served, tmp_path: Path
) -> None:
    # A run stopped between the last byte and the rename: the server answers 416.
    url = f"http://{server}/cuda.run"
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / f"{hashlib.sha256(url.encode()).hexdigest()}.part").write_bytes(BODY)
    assert fetch_artifact(runfile(url), tmp_path).read_bytes() == BODY
    assert served.ranges == [f"bytes={len(BODY)}-"]
    assert served.sent == 0


def test_http_errors_name_the_key_not_the_credentials(server: str, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as raised:
        fetch_artifact(runfile(f"http://user:secret@{server}/absent.run"), tmp_path)
    assert str(raised.value).startswith(
        f"cuda_runfile_url = 'http://***@{server}/absent.run': cannot fetch it: HTTP 404 Not Found;"
    )
    printed = "".join(traceback.format_exception(type(raised.value), raised.value, None))
    assert "secret" not in printed
    assert not (tmp_path / BODY_SHA256).exists()


def test_connection_refused_names_the_key_not_the_credentials(tmp_path: Path) -> None:
    # Nothing listens on port 9 (discard) on the test machine.
    with pytest.raises(ArtifactError) as raised:
        fetch_artifact(runfile("http://user:secret@127.0.0.1:9/cuda.run"), tmp_path)
    assert str(raised.value).startswith(
        "cuda_runfile_url = 'http://***@127.0.0.1:9/cuda.run': cannot fetch it: ConnectionError"
    )
    assert "secret" not in str(raised.value)


@pytest.mark.parametrize("form", ["file URL", "path"])
def test_fetches_from_the_controllers_disk(tmp_path: Path, form: str) -> None:
    source = tmp_path / "vendor" / "cuda 11.2.run"
    source.parent.mkdir()
    source.write_bytes(BODY)
    url = {"file URL": "file://" + str(source).replace(" ", "%20"), "path": str(source)}[form]
    path = fetch_artifact(runfile(url), tmp_path / "cache")
    assert path == tmp_path / "cache" / BODY_SHA256
    assert path.read_bytes() == BODY


def test_a_missing_local_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as raised:
        fetch_artifact(runfile(str(tmp_path / "absent.run")), tmp_path / "cache")
    assert str(raised.value).startswith(
        f"cuda_runfile_url = '{tmp_path}/absent.run': cannot fetch it: [Errno 2] No such file"
    )


def test_a_malformed_pin_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"^cuda_runfile_sha256 = '\.\./x' is not a sha256"):
        cached(runfile("https://example.invalid/cuda.run", "../x"), tmp_path)


def test_size_of_a_cached_file_needs_no_request(
    server: str, served: Served, tmp_path: Path
) -> None:
    (tmp_path / BODY_SHA256).write_bytes(b"12345")
    assert artifact_size(runfile(f"http://{server}/cuda.run"), tmp_path) == 5
    assert served.heads == 0


def test_size_from_head_without_the_body(server: str, served: Served, tmp_path: Path) -> None:
    assert artifact_size(runfile(f"http://{server}/cuda.run"), tmp_path) == 1_000_192
    assert (served.heads, served.ranges) == (1, [])
    assert artifact_size(runfile(f"http://{server}/absent.run"), tmp_path) is None


def test_size_unknown_when_unreachable_or_missing(tmp_path: Path) -> None:
    assert artifact_size(runfile("http://127.0.0.1:9/cuda.run"), tmp_path) is None
    assert artifact_size(runfile(str(tmp_path / "absent.run")), tmp_path) is None
    (tmp_path / "here.run").write_bytes(b"123")
    assert artifact_size(runfile(f"file://{tmp_path}/here.run"), tmp_path) == 3


def test_progress_off_a_terminal_is_a_line_every_10_percent(
    server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    caplog.set_level(logging.INFO, logger="pyinfra")
    fetch_artifact(runfile(f"http://user:secret@{server}/cuda.run"), tmp_path)
    assert caplog.messages == [
        f"fetching http://***@{server}/cuda.run (976.8 KiB) into the artifact cache",
        *(f"cuda.run: {percent}% of 976.8 KiB" for percent in range(10, 101, 10)),
        f"cuda.run: sha256 {BODY_SHA256} verified, cached as {tmp_path / BODY_SHA256}",
    ]


def test_progress_on_a_terminal_is_a_bar(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    fetch_artifact(runfile(f"http://{server}/cuda.run"), tmp_path)
    assert "cuda.run (976.8 KiB)" in terminal.getvalue()
    assert "100%" in terminal.getvalue()


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "gpufleet" / "artifacts"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "gpufleet" / "artifacts"
