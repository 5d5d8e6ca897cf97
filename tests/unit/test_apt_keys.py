"""Repository keys: fingerprints computed here must equal what gpg itself reports."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from deploys.apt import (
    RepositoryKeyError,
    dearmor,
    fetch_keyring,
    key_fingerprint,
    source_line,
    transaction,
)
from tests.fakehost import FIXTURE_KEY, FIXTURE_KEY_FINGERPRINT


def gpg(home: Path, *args: str) -> str:
    return subprocess.run(
        ["gpg", "--batch", "--quiet", *args],
        env={**os.environ, "GNUPGHOME": str(home)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.fixture(params=["rsa3072", "ed25519", "dsa2048"])
def generated_key(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[bytes, str]:
    """A fresh key made by real gpg: (armored export, the fingerprint gpg reports)."""
    if shutil.which("gpg") is None:
        pytest.skip("needs gpg (apt-get install gnupg)")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    gpg(
        home,
        "--passphrase",
        "",
        "--quick-gen-key",
        "test <t@example.invalid>",
        request.param,
        "sign",
        "never",
    )
    colons = gpg(home, "--with-colons", "--fingerprint")
    fingerprint = next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr"))
    return gpg(home, "--armor", "--export").encode(), fingerprint


def test_fingerprint_matches_gpg(generated_key: tuple[bytes, str]) -> None:
    armored, fingerprint = generated_key
    assert key_fingerprint(dearmor(armored)) == fingerprint


def test_dearmor_equals_gpg_dearmor(generated_key: tuple[bytes, str], tmp_path: Path) -> None:
    armored, _ = generated_key
    source = tmp_path / "key.asc"
    source.write_bytes(armored)
    binary = subprocess.run(
        ["gpg", "--dearmor"], input=armored, capture_output=True, check=True
    ).stdout
    assert dearmor(armored) == binary


def test_fetch_keyring_accepts_the_pinned_key_armored_or_binary(tmp_path: Path) -> None:
    keyring = fetch_keyring("k", str(FIXTURE_KEY), FIXTURE_KEY_FINGERPRINT)
    binary = tmp_path / "key.gpg"
    binary.write_bytes(keyring)
    spaced = " ".join(FIXTURE_KEY_FINGERPRINT[i : i + 4] for i in range(0, 40, 4))
    assert fetch_keyring("k", f"file://{binary}", spaced) == keyring


def test_fetch_keyring_refuses_another_key() -> None:
    with pytest.raises(RepositoryKeyError) as raised:
        fetch_keyring(
            "nvidia_cuda_repo_key_url", str(FIXTURE_KEY), "EB693B3035CD5710E231E123A4B469963BF863CC"
        )
    assert str(raised.value) == (
        f"nvidia_cuda_repo_key_url = '{FIXTURE_KEY}' holds key {FIXTURE_KEY_FINGERPRINT}, not the "
        "pinned EB693B3035CD5710E231E123A4B469963BF863CC; if the repository's key really changed, "
        "set the matching *_key_fingerprint in your inventory"
    )


def test_fetch_keyring_names_the_key_and_the_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent.asc"
    with pytest.raises(
        RepositoryKeyError, match=r"^nvidia_container_repo_key_url = '.*absent.asc': cannot fetch"
    ):
        fetch_keyring("nvidia_container_repo_key_url", str(missing), FIXTURE_KEY_FINGERPRINT)
    garbage = tmp_path / "garbage.asc"
    garbage.write_text("<html>404 Not Found</html>\n")
    with pytest.raises(
        RepositoryKeyError, match="is not an OpenPGP public key: not an OpenPGP packet"
    ):
        fetch_keyring("nvidia_container_repo_key_url", str(garbage), FIXTURE_KEY_FINGERPRINT)


def test_source_line_is_signed_by_its_own_keyring() -> None:
    assert source_line("https://example.invalid/cuda/", "/etc/apt/keyrings/cuda.gpg") == (
        "deb [signed-by=/etc/apt/keyrings/cuda.gpg] https://example.invalid/cuda/ /\n"
    )


def test_transaction_prints_its_output_and_keeps_the_first_failure(tmp_path: Path) -> None:
    # This machine runs no systemd: the steps run in the foreground, with the same contract.
    log = str(tmp_path / "log" / "apt.log")
    ok = subprocess.run(
        ["sh", "-c", transaction(["echo unpacking", "echo holding"], log)],
        capture_output=True,
        text=True,
    )
    assert (ok.returncode, ok.stdout) == (0, "unpacking\nholding\n")
    failed = subprocess.run(
        [
            "sh",
            "-c",
            transaction(["echo 'E: Unable to locate package x' >&2", "false", "echo no"], log),
        ],
        capture_output=True,
        text=True,
    )
    assert (failed.returncode, failed.stdout) == (1, "E: Unable to locate package x\n")
