"""Repository keys: checked against keys, keyrings and certificates that real gpg makes."""

from __future__ import annotations

import http.server
import logging
import os
import re
import shutil
import subprocess
import time
import traceback
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gpufleet.repository_keys import (
    RepositoryKeyError,
    dearmor,
    fetch_keyring,
    key_fingerprint,
    read_packets,
)
from tests.fakehost import FIXTURE_KEY, FIXTURE_KEY_FINGERPRINT
from tests.unit.local_http import serving

DAY = 24 * 60 * 60


class GnuPG:
    """gpg in a throwaway GNUPGHOME; its keys have no passphrase."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def run(self, *arguments: str, faked_time: int | None = None, stdin: bytes = b"") -> bytes:
        unattended = ["--batch", "--quiet", "--yes", "--pinentry-mode", "loopback"]
        clock = [] if faked_time is None else ["--faked-system-time", f"{faked_time}!"]
        return subprocess.run(
            ["gpg", *unattended, "--passphrase", "", *clock, *arguments],
            env={**os.environ, "GNUPGHOME": str(self.home)},
            input=stdin,
            check=True,
            capture_output=True,
        ).stdout

    def generate(
        self,
        algorithm: str = "ed25519",
        usage: str = "sign",
        expires: str = "never",
        faked_time: int | None = None,
    ) -> str:
        """The fingerprint of a new key."""
        status = self.run(
            "--status-fd",
            "1",
            "--quick-gen-key",
            "test <t@example.invalid>",
            algorithm,
            usage,
            expires,
            faked_time=faked_time,
        )
        return re.findall(rb"KEY_CREATED [BP] ([0-9A-F]{40})", status)[0].decode()

    def show(self, keyring: bytes) -> list[list[str]]:
        """The records of `gpg --show-keys --with-colons`, split into fields."""
        listing = self.run("--show-keys", "--with-colons", stdin=keyring).decode()
        return [line.split(":") for line in listing.splitlines()]

    def fingerprints(self, keyring: bytes) -> list[str]:
        return [record[9] for record in self.show(keyring) if record[0] == "fpr"]

    def expiry(self, keyring: bytes) -> str:
        """The primary key's expiry as gpg computes it, in the form the messages use."""
        expires = next(int(record[6]) for record in self.show(keyring) if record[0] == "pub")
        return f"{datetime.fromtimestamp(expires, timezone.utc):%Y-%m-%d %H:%M} UTC"


@pytest.fixture
def gnupg(tmp_path: Path) -> Iterator[GnuPG]:
    if shutil.which("gpg") is None:
        pytest.skip("needs gpg (apt-get install gnupg)")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    yield GnuPG(home)
    # Key generation starts a gpg-agent for the home; it would outlive the test run.
    subprocess.run(
        ["gpgconf", "--kill", "all"],
        env={**os.environ, "GNUPGHOME": str(home)},
        check=False,
        capture_output=True,
    )


def key_file(tmp_path: Path, content: bytes, name: str = "key.asc") -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def refusal(location: str, fingerprint: str, now: datetime | None = None) -> str:
    with pytest.raises(RepositoryKeyError) as raised:
        fetch_keyring("nvidia_cuda_repo_key_url", location, fingerprint, now)
    return str(raised.value)


@pytest.fixture(params=["rsa3072", "ed25519", "dsa2048"])
def generated_key(request: pytest.FixtureRequest, gnupg: GnuPG) -> tuple[bytes, str]:
    """A fresh key made by real gpg: (armored export, the fingerprint gpg reports)."""
    fingerprint = gnupg.generate(request.param)
    return gnupg.run("--armor", "--export"), fingerprint


def test_fingerprint_matches_gpg(generated_key: tuple[bytes, str]) -> None:
    armored, fingerprint = generated_key
    assert key_fingerprint(dearmor(armored)) == fingerprint


def test_dearmor_equals_gpg_dearmor(generated_key: tuple[bytes, str]) -> None:
    armored, _ = generated_key
    binary = subprocess.run(
        ["gpg", "--dearmor"], input=armored, capture_output=True, check=True
    ).stdout
    assert dearmor(armored) == binary


def test_fetch_keyring_accepts_the_pinned_key_armored_or_binary(tmp_path: Path) -> None:
    keyring = fetch_keyring("k", str(FIXTURE_KEY), FIXTURE_KEY_FINGERPRINT)
    assert keyring == dearmor(FIXTURE_KEY.read_bytes())
    binary = key_file(tmp_path, keyring, "key.gpg")
    spaced = " ".join(FIXTURE_KEY_FINGERPRINT[i : i + 4] for i in range(0, 40, 4))
    assert fetch_keyring("k", f"file://{binary}", spaced.lower()) == keyring


def test_fetch_keyring_refuses_another_key() -> None:
    assert refusal(str(FIXTURE_KEY), "EB693B3035CD5710E231E123A4B469963BF863CC") == (
        f"nvidia_cuda_repo_key_url = '{FIXTURE_KEY}' holds key {FIXTURE_KEY_FINGERPRINT}, not the "
        "pinned EB693B3035CD5710E231E123A4B469963BF863CC; if the repository's key really changed, "
        "set the matching *_key_fingerprint in your inventory"
    )


def test_fetch_keyring_refuses_a_pin_that_shares_only_the_short_key_id() -> None:
    # The fixture key's 32-bit short ID (A0D62461) behind other digits: short IDs are forged.
    impostor = "00000000000000000000000000000000A0D62461"
    assert f"holds key {FIXTURE_KEY_FINGERPRINT}, not the pinned {impostor}" in refusal(
        str(FIXTURE_KEY), impostor
    )


def test_fetch_keyring_names_the_key_and_the_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent.asc"
    with pytest.raises(
        RepositoryKeyError, match=r"^nvidia_container_repo_key_url = '.*absent.asc': cannot fetch"
    ):
        fetch_keyring("nvidia_container_repo_key_url", str(missing), FIXTURE_KEY_FINGERPRINT)
    garbage = key_file(tmp_path, b"<html>404 Not Found</html>\n", "garbage.asc")
    with pytest.raises(
        RepositoryKeyError, match="is not an OpenPGP public key: not an OpenPGP packet"
    ):
        fetch_keyring("nvidia_container_repo_key_url", garbage, FIXTURE_KEY_FINGERPRINT)


def test_a_key_with_subkeys_is_installed_whole(
    gnupg: GnuPG, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fingerprint = gnupg.generate()
    gnupg.run("--quick-add-key", fingerprint, "cv25519", "encr", "never")
    gnupg.run("--quick-add-key", fingerprint, "ed25519", "sign", "never")
    exported = gnupg.run("--export")
    with caplog.at_level(logging.WARNING, logger="pyinfra"):
        keyring = fetch_keyring("k", key_file(tmp_path, exported), fingerprint)
    assert len(gnupg.fingerprints(keyring)) == 3
    assert gnupg.fingerprints(keyring) == gnupg.fingerprints(exported)
    assert caplog.messages == []  # the key never expires


def test_new_format_packet_headers_are_read(tmp_path: Path) -> None:
    """gpg writes old-format headers (RFC 4880 4.2.1); other tools write new ones (4.2.2)."""
    packets = read_packets(dearmor(FIXTURE_KEY.read_bytes()))
    assert {len(packet.body) < 192 for packet in packets} == {True, False}

    def new_format(tag: int, body: bytes, five_octet_length: bool) -> bytes:
        if five_octet_length:
            length = b"\xff" + len(body).to_bytes(4, "big")
        elif len(body) < 192:
            length = bytes([len(body)])
        else:
            length = ((len(body) - 192) + (192 << 8)).to_bytes(2, "big")
        return bytes([0xC0 | tag]) + length + body

    rewritten = b"".join(
        new_format(packet.tag, packet.body, five_octet_length=packet.tag == 13)
        for packet in packets
    )
    assert [(packet.tag, packet.body) for packet in read_packets(rewritten)] == [
        (packet.tag, packet.body) for packet in packets
    ]
    location = key_file(tmp_path, rewritten, "key.gpg")
    assert fetch_keyring("k", location, FIXTURE_KEY_FINGERPRINT) == rewritten


def test_trust_packets_are_not_installed(gnupg: GnuPG, tmp_path: Path) -> None:
    fingerprint = gnupg.generate()
    exported = gnupg.run("--export")
    # A legacy keyring file (what --keyring writes) keeps trust packets beside the key's.
    legacy = tmp_path / "legacy.gpg"
    legacy.write_bytes(b"")
    gnupg.run("--no-default-keyring", "--keyring", str(legacy), "--import", stdin=exported)
    assert 12 in {packet.tag for packet in read_packets(legacy.read_bytes())}
    assert fetch_keyring("k", str(legacy), fingerprint) == exported


@pytest.mark.parametrize("packaging", ["one armored block", "two armored blocks", "binary"])
def test_refuses_a_second_key(gnupg: GnuPG, tmp_path: Path, packaging: str) -> None:
    pinned = gnupg.generate()
    other = gnupg.generate()
    content = {
        "one armored block": gnupg.run("--armor", "--export", pinned, other),
        "two armored blocks": gnupg.run("--armor", "--export", pinned)
        + gnupg.run("--armor", "--export", other),
        "binary": gnupg.run("--export", pinned, other),
    }[packaging]
    message = refusal(key_file(tmp_path, content), pinned)
    assert f"must hold exactly the pinned key {pinned}" in message
    assert f"key(s) found: {pinned}, {other}" in message


def test_refuses_what_is_not_a_public_key(gnupg: GnuPG, tmp_path: Path) -> None:
    fingerprint = gnupg.generate()
    # A signed message: one-pass signature (tag 4), literal data (11) and signature packets.
    signed_message = gnupg.run(
        "--sign", "--compress-algo", "none", stdin=b"deb [trusted=yes] http://evil.invalid/ /\n"
    )
    message = refusal(key_file(tmp_path, gnupg.run("--export") + signed_message), fingerprint)
    assert "holds OpenPGP packets that are not part of a public key (tag 4, 11;" in message


@pytest.mark.parametrize("with_public_key", [False, True])
def test_refuses_a_secret_key(gnupg: GnuPG, tmp_path: Path, with_public_key: bool) -> None:
    fingerprint = gnupg.generate()
    public = gnupg.run("--armor", "--export") if with_public_key else b""
    content = public + gnupg.run("--armor", "--export-secret-keys")
    message = refusal(key_file(tmp_path, content), fingerprint)
    assert "holds a SECRET key" in message
    assert "a secret key is never installed on hosts" in message
    assert f"key(s) found: {fingerprint if with_public_key else 'none'})" in message


@pytest.mark.parametrize("digits", [8, 16])
def test_refuses_a_short_key_id(gnupg: GnuPG, tmp_path: Path, digits: int) -> None:
    fingerprint = gnupg.generate()
    message = refusal(key_file(tmp_path, gnupg.run("--export")), fingerprint[-digits:])
    assert f"the pinned fingerprint {fingerprint[-digits:]!r} is not 40 hex digits" in message
    assert f"key(s) found: {fingerprint}" in message


def test_refuses_an_empty_key_file(tmp_path: Path) -> None:
    message = refusal(key_file(tmp_path, b""), FIXTURE_KEY_FINGERPRINT)
    assert "key(s) found: none" in message


def test_refuses_a_revoked_key(gnupg: GnuPG, tmp_path: Path) -> None:
    fingerprint = gnupg.generate()
    certificate = (gnupg.home / "openpgp-revocs.d" / f"{fingerprint}.rev").read_bytes()
    # gpg puts a colon before the armor line so that the certificate is not imported by mistake.
    gnupg.run("--import", stdin=certificate.replace(b":-----BEGIN", b"-----BEGIN"))
    message = refusal(key_file(tmp_path, gnupg.run("--export")), fingerprint)
    assert f"key {fingerprint} is revoked (no reason given)" in message


def test_refuses_an_expired_key(gnupg: GnuPG, tmp_path: Path) -> None:
    ten_days_ago = int(time.time()) - 10 * DAY
    fingerprint = gnupg.generate(expires="1d", faked_time=ten_days_ago)
    exported = gnupg.run("--export")
    location = key_file(tmp_path, exported)
    message = refusal(location, fingerprint)
    assert f"key {fingerprint} expired on {gnupg.expiry(exported)}" in message
    assert "the repository's key has likely been rotated" in message
    nine_days_ago = datetime.now(timezone.utc) - timedelta(days=9, hours=1)
    assert fetch_keyring("k", location, fingerprint, now=nine_days_ago) == exported


def test_the_newest_self_signature_decides_the_expiry(gnupg: GnuPG, tmp_path: Path) -> None:
    fingerprint = gnupg.generate(expires="1d", faked_time=int(time.time()) - 10 * DAY)
    expired = gnupg.run("--export")
    gnupg.run("--quick-set-expire", fingerprint, "2y")
    # Importing the old export again brings its self-signature back, after the newer one.
    gnupg.run("--import", stdin=expired)
    extended = gnupg.run("--export")
    assert [packet.tag for packet in read_packets(extended)] == [6, 13, 2, 2]
    assert gnupg.expiry(extended) > gnupg.expiry(expired)
    assert fetch_keyring("k", key_file(tmp_path, extended), fingerprint) == extended


def test_warns_of_a_key_that_expires_soon(
    gnupg: GnuPG, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fingerprint = gnupg.generate(expires="30d")
    exported = gnupg.run("--export")
    location = key_file(tmp_path, exported)
    with caplog.at_level(logging.WARNING, logger="pyinfra"):
        ninety_one_days_before = datetime.now(timezone.utc) - timedelta(days=61)
        assert fetch_keyring("k", location, fingerprint, now=ninety_one_days_before) == exported
        assert caplog.messages == []
        assert fetch_keyring("k", location, fingerprint) == exported
    [warning] = caplog.messages
    assert f"key {fingerprint} expires on {gnupg.expiry(exported)}, in 29 day(s)" in warning


class KeyServer(http.server.BaseHTTPRequestHandler):
    """Serves the fixture key at /key; anything else is 404."""

    def do_GET(self) -> None:
        if self.path != "/key":
            self.send_error(404)
            return
        body = FIXTURE_KEY.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def key_server() -> Iterator[str]:
    """The server's address, host:port."""
    with serving(KeyServer) as address:
        yield address


def test_fetches_a_key_over_http(key_server: str) -> None:
    keyring = fetch_keyring("k", f"http://user:secret@{key_server}/key", FIXTURE_KEY_FINGERPRINT)
    assert keyring == dearmor(FIXTURE_KEY.read_bytes())


@pytest.mark.parametrize("failure", ["connection refused", "HTTP 404"])
def test_fetch_errors_do_not_show_url_credentials(key_server: str, failure: str) -> None:
    # Nothing listens on port 9 (discard) on the test machine.
    address = {"connection refused": "127.0.0.1:9", "HTTP 404": key_server}[failure]
    with pytest.raises(RepositoryKeyError) as raised:
        fetch_keyring("k", f"http://user:secret@{address}/absent", FIXTURE_KEY_FINGERPRINT)
    assert str(raised.value).startswith(f"k = 'http://***@{address}/absent': cannot fetch")
    if failure == "HTTP 404":
        assert str(raised.value).endswith("HTTP 404 Not Found")
    # What pyinfra prints on an error; without this test's own frame, whose source has the URL.
    printed = "".join(traceback.format_exception(type(raised.value), raised.value, None))
    assert "secret" not in printed
