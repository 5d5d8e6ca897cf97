"""apt source lines, logins, other source files' entries and package transactions."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gpufleet.operations.packages import auth_entry, source_line, take_over_command, transaction
from gpufleet.stack.urls import credentials

# dpkg as the transaction calls it: answering like the real one while the file "locked" exists.
FAKE_DPKG = """#!/bin/sh
if [ -e "$(dirname "$0")/locked" ]; then
    echo "dpkg: error: dpkg frontend lock was locked by another process with pid $$" >&2
    exit 2
fi
"""


@pytest.fixture
def fake_dpkg(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dpkg").write_text(FAKE_DPKG)
    (bin_dir / "dpkg").chmod(0o755)
    return bin_dir


def run_transaction(
    bin_dir: Path, steps: list[str], lock_timeout: int, log: Path
) -> subprocess.CompletedProcess[str]:
    # This machine runs no systemd: the steps run in the foreground, with the same contract.
    return subprocess.run(
        ["sh", "-c", transaction(steps, lock_timeout, str(log))],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )


def test_source_line_is_signed_by_its_own_keyring() -> None:
    assert source_line("https://example.invalid/cuda/", "/etc/apt/keyrings/cuda.gpg") == (
        "deb [signed-by=/etc/apt/keyrings/cuda.gpg] https://example.invalid/cuda/ /\n"
    )


def test_a_login_goes_to_auth_conf_never_into_the_source_line() -> None:
    url = "http://gpu:s3cret%20x@mirror.example.invalid:8080/cuda/"
    assert source_line(url, "/k.gpg") == (
        "deb [signed-by=/k.gpg] http://mirror.example.invalid:8080/cuda/ /\n"
    )
    login = credentials(url)
    assert login is not None
    # A machine without a scheme would match https only (apt_auth.conf(5)).
    assert auth_entry(login) == (
        "machine http://mirror.example.invalid:8080/cuda login gpu password s3cret x\n"
    )


def test_transaction_prints_its_output_and_keeps_the_first_failure(
    fake_dpkg: Path, tmp_path: Path
) -> None:
    log = tmp_path / "log" / "apt.log"
    ok = run_transaction(fake_dpkg, ["echo unpacking", "echo holding"], 600, log)
    assert (ok.returncode, ok.stdout) == (0, "unpacking\nholding\n")
    failed = run_transaction(
        fake_dpkg, ["echo 'E: Unable to locate package x' >&2", "false", "echo no"], 600, log
    )
    assert (failed.returncode, failed.stdout) == (1, "E: Unable to locate package x\n")
    # The log keeps every transaction's output.
    assert log.read_text() == "unpacking\nholding\nE: Unable to locate package x\n"


def test_transaction_waits_for_the_dpkg_lock_and_says_who_holds_it(
    fake_dpkg: Path, tmp_path: Path
) -> None:
    lock = fake_dpkg / "locked"
    lock.touch()
    released = subprocess.Popen(["sh", "-c", f"sleep 3; rm {lock}"])
    waited = run_transaction(fake_dpkg, ["echo installed"], 60, tmp_path / "apt.log")
    released.wait()
    assert waited.returncode == 0, waited.stderr
    first, last = waited.stdout.splitlines()
    assert first.startswith("gpufleet: waiting up to 60s for the dpkg lock, held by pid ")
    assert last == "installed"


def test_transaction_fails_when_the_lock_outlives_its_timeout(
    fake_dpkg: Path, tmp_path: Path
) -> None:
    (fake_dpkg / "locked").touch()
    failed = run_transaction(fake_dpkg, ["echo installed"], 3, tmp_path / "apt.log")
    assert failed.returncode == 1
    assert "gpufleet: the dpkg lock is still held after 3s (gpu_apt_lock_timeout) by pid" in (
        failed.stdout
    )
    assert "installed" not in failed.stdout


def test_another_files_entry_for_the_repository_is_disabled_others_kept(tmp_path: Path) -> None:
    location = "developer.download.nvidia.com/compute/cuda/repos/ubuntu2004/x86_64"
    listing = tmp_path / "cuda-ubuntu2004-x86_64.list"
    listing.write_text(
        "deb http://deb.example.invalid/debian bookworm main\n"
        f"deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] https://{location}/ /\n"
    )
    deb822 = tmp_path / "cuda.sources"
    deb822.write_text(f"Types: deb\nURIs: https://{location}/\nSuites: /\n")
    for path in (listing, deb822):
        command = take_over_command(str(path), location, "/etc/apt/sources.list.d/cuda.list")
        subprocess.run(["sh", "-c", command], check=True)
    assert listing.read_text() == (
        "deb http://deb.example.invalid/debian bookworm main\n"
        "# disabled by gpufleet, which manages this repository in "
        "/etc/apt/sources.list.d/cuda.list: deb [signed-by=/usr/share/keyrings/"
        f"cuda-archive-keyring.gpg] https://{location}/ /\n"
    )
    assert not deb822.exists()
    assert (tmp_path / "cuda.sources.disabled").read_text().startswith("Types: deb\n")


# Ubuntu 20.04's dpkg 1.19 names no pid: the kernel's lock table tells who holds the lock.
FAKE_DPKG_1_19 = """#!/bin/sh
if [ -e "$(dirname "$0")/locked" ]; then
    echo "dpkg: error: dpkg frontend is locked by another process" >&2
    exit 2
fi
"""
HOLD_LOCK = (
    "import fcntl, sys, time; lock = open(sys.argv[1], 'w'); fcntl.lockf(lock, fcntl.LOCK_EX); "
    "open(sys.argv[2], 'w').close(); time.sleep(30)"
)


def test_a_dpkg_that_names_no_pid_has_its_lock_holder_found_by_lslocks(
    fake_dpkg: Path, tmp_path: Path
) -> None:
    (fake_dpkg / "dpkg").write_text(FAKE_DPKG_1_19)
    (fake_dpkg / "locked").touch()
    held = tmp_path / "held"
    # The lock file dpkg and apt take; this machine's, held for a moment by a marked process.
    holder = subprocess.Popen(
        ["python3", "-c", HOLD_LOCK, "/var/lib/dpkg/lock-frontend", str(held)]
    )
    try:
        while not held.exists():
            pass
        failed = run_transaction(fake_dpkg, ["echo installed"], 2, tmp_path / "apt.log")
    finally:
        holder.kill()
        holder.wait()
    assert failed.returncode == 1
    held_by = f"the dpkg lock is still held after 2s (gpu_apt_lock_timeout) by pid {holder.pid}, "
    assert held_by in failed.stdout, failed.stdout
    assert "python3 -c import fcntl" in failed.stdout.split(held_by, 1)[1]
