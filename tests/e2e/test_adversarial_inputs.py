"""
Attacks and hostile states replayed on booted test hosts: the host's real state is checked after
each, never the run's report alone. Source-line injection, shell metacharacters and misspelt keys
refuse that host alone; a key file with a second key is refused; credentials stay out of sources
lists and output; what real hosts already have (cuda-keyring's entry for the same repository, a
process holding the dpkg lock, a repository that never answers) neither breaks apt nor hangs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.fleet import FleetFactory
from testbed.machine import start_process
from testbed.os_mirror import OS_KEYRING_ON_HOST
from testbed.repos import RepoTree
from testbed.runs import repo_data, run_deploy
from testbed.standin_repo import REPO_HOST
from tests.e2e.test_gpu_host_deploy import (
    SNAPSHOT,
    assert_converged,
    inventory,
    ssh_ok,
)

pytestmark = pytest.mark.e2e

INJECTED_URL_TAIL = " /\ndeb [trusted=yes] http://10.213.0.1:8097/ /\n#"
SECRET = "s3cret-token"
# What NVIDIA's cuda-keyring package writes: the same repository, another signed-by keyring.
CUDA_KEYRING_LIST = "/etc/apt/sources.list.d/cuda-ubuntu2004-x86_64.list"
CUDA_KEYRING_KEYRING = "/usr/share/keyrings/cuda-archive-keyring.gpg"
# Holds dpkg's frontend lock as apt and dpkg take it (fcntl), for the given seconds.
HOLD_DPKG_LOCK = (
    "import fcntl, sys, time\n"
    "lock = open('/var/lib/dpkg/lock-frontend', 'w')\n"
    "fcntl.lockf(lock, fcntl.LOCK_EX)\n"
    "open('/run/lock-held', 'w').close()\n"
    "time.sleep(float(sys.argv[1]))\n"
)
# A TCP server that accepts connections and never answers.
SILENT_SERVER = (
    "import socket, sys, time\n"
    "server = socket.socket()\n"
    "server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "server.bind((sys.argv[1], int(sys.argv[2])))\n"
    "server.listen(64)\n"
    "print('listening', flush=True)\n"
    "held = []\n"
    "while True:\n"
    "    held.append(server.accept())\n"
)


def gpg_key_file(tmp_path: Path, pinned_key: Path) -> Path:
    """The pinned repository key followed by a second key made by real gpg."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    gpg = ["gpg", "--batch", "--quiet", "--passphrase", ""]
    try:
        subprocess.run(
            [*gpg, "--quick-gen-key", "attacker <a@example.invalid>", "ed25519", "sign", "never"],
            env=env,
            check=True,
        )
        other = subprocess.run(
            [*gpg, "--armor", "--export"], env=env, check=True, capture_output=True
        ).stdout
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)
    path = tmp_path / "two-keys.asc"
    path.write_bytes(pinned_key.read_bytes() + other)
    return path


def hold_dpkg_lock(fleet_ssh: list[str], seconds: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*fleet_ssh[:-1], f"python3 -c {shlex.quote(HOLD_DPKG_LOCK)} {seconds}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.skipif(shutil.which("gpg") is None, reason="needs gpg (apt-get install gnupg)")
def test_hostile_input_refuses_only_its_host_and_real_host_state_is_taken_in_stride(
    fleet_factory: FleetFactory, repo_tree: RepoTree, tmp_path: Path
) -> None:
    fleet = fleet_factory(count=7)
    (healthy, injected, metacharacters, misspelt, two_keys, lock_timeout, bad_daemon_json) = (
        fleet.hosts
    )
    cuda_repo_url = repo_tree.cuda_repo_url(fleet.os_release.cuda_directory)
    url_with_login = cuda_repo_url.replace("http://", f"http://gpu:{SECRET}@")
    host_data: dict[str, dict[str, object]] = {
        healthy.name: {"nvidia_cuda_repo_url": url_with_login},
        injected.name: {"nvidia_cuda_repo_url": cuda_repo_url + INJECTED_URL_TAIL},
        metacharacters.name: {"nvidia_driver_branch": "470;touch /tmp/injected"},
        misspelt.name: {"cuda_verison": "11.8"},
        two_keys.name: {
            "nvidia_cuda_repo_key_url": str(gpg_key_file(tmp_path, repo_tree.key_path))
        },
        lock_timeout.name: {"gpu_apt_lock_timeout": 5},
    }
    path = inventory(fleet, tmp_path, repo_tree, host_data=host_data)
    ssh_ok(fleet, bad_daemon_json, "mkdir -p /etc/docker && echo '{\"log-driver\": }' "
                                   "> /etc/docker/daemon.json")  # fmt: skip
    refused = [injected, metacharacters, misspelt, two_keys, bad_daemon_json]
    before = {host.name: ssh_ok(fleet, host, SNAPSHOT) for host in refused}

    # cuda-keyring's entry for the repository gpufleet manages: with both, apt refuses to run.
    ssh_ok(
        fleet,
        healthy,
        f"cp {OS_KEYRING_ON_HOST} {CUDA_KEYRING_KEYRING} && "
        f"echo 'deb [signed-by={CUDA_KEYRING_KEYRING}] {cuda_repo_url} /' "
        f"> {CUDA_KEYRING_LIST}",
    )
    # A user's apt holds the dpkg lock for 20 s on one host, and for longer than the host's
    # gpu_apt_lock_timeout on the other.
    holders = [
        hold_dpkg_lock(fleet.ssh_command(healthy, "true"), 20),
        hold_dpkg_lock(fleet.ssh_command(lock_timeout, "true"), 300),
    ]
    try:
        for host in (healthy, lock_timeout):
            ssh_ok(fleet, host, "until [ -e /run/lock-held ]; do sleep 0.1; done")
        run = run_deploy(fleet, path)
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()

    assert run.returncode != 0
    assert run.results is not None, run.output[-4000:]
    expected_failed = {host.address for host in [*refused, lock_timeout]}
    assert set(run.results["failed_hosts"]) == expected_failed, run.output[-6000:]
    output = run.output
    assert SECRET not in output

    # Refused hosts: the reason, and not a byte changed.
    assert "nvidia_cuda_repo_url = " in output and "contains whitespace or a control" in output
    assert "nvidia_driver_branch = '470;touch /tmp/injected' is not a driver branch" in output
    assert "cuda_verison is not a gpufleet data key; did you mean cuda_version?" in output
    assert "nvidia_cuda_repo_key_url = " in output and repo_tree.key_fingerprint in output
    assert "/etc/docker/daemon.json cannot be read as dockerd reads it (line 1" in output
    for host in refused:
        assert ssh_ok(fleet, host, SNAPSHOT) == before[host.name], host.name
    assert fleet.ssh(metacharacters, "test -e /tmp/injected").returncode == 1

    # The lock outlived the timeout: the host failed naming the holder, nothing installed.
    assert "the dpkg lock is still held after 5s (gpu_apt_lock_timeout) by pid" in output
    assert "python3 -c" in output
    assert "nvidia-dkms-535" not in ssh_ok(fleet, lock_timeout, "dpkg-query -W -f '${Package}\\n'")

    # The healthy host waited for the lock, took over cuda-keyring's entry, and apt works.
    apt_log = ssh_ok(fleet, healthy, "cat /var/log/gpufleet/apt.log")
    assert "gpufleet: waiting up to 600s for the dpkg lock, held by pid" in apt_log
    assert ssh_ok(fleet, healthy, "apt-mark showhold | grep -c '^nvidia-dkms-535$'").strip() == "1"
    update = fleet.ssh(healthy, "apt-get update 2>&1")
    assert update.returncode == 0 and "Conflicting values" not in update.stdout, update.stdout
    keyring_list = ssh_ok(fleet, healthy, f"cat {CUDA_KEYRING_LIST}")
    assert keyring_list.startswith("# disabled by gpufleet"), keyring_list
    # The login went to apt's auth.conf.d, private; the sources list holds none of it.
    assert SECRET not in ssh_ok(fleet, healthy, "cat /etc/apt/sources.list.d/*.list")
    auth = ssh_ok(fleet, healthy, "stat -c '%a %U' /etc/apt/auth.conf.d/cuda.conf")
    assert auth.strip() == "600 root"
    assert ssh_ok(fleet, healthy, "cat /etc/apt/auth.conf.d/cuda.conf") == (
        f"machine {cuda_repo_url.rstrip('/')} login gpu password {SECRET}\n"
    )
    assert "trusted=yes" not in ssh_ok(
        fleet, injected, "cat /etc/apt/sources.list.d/*.list || true"
    )

    again = run_deploy(fleet, path, "--limit", healthy.address)
    assert_converged(again)
    assert again.changed() == {}


def test_a_repository_that_never_answers_fails_the_host_in_bounded_time(
    fleet_factory: FleetFactory, repo_tree: RepoTree, tmp_path: Path
) -> None:
    fleet = fleet_factory(count=1)
    (host,) = fleet.hosts
    port = 8098
    log = tmp_path / "silent.log"
    server = start_process(
        fleet.controller.command([sys.executable, "-c", SILENT_SERVER, REPO_HOST, str(port)]), log
    )
    try:
        while "listening" not in log.read_text():
            assert server.poll() is None, log.read_text()
            time.sleep(0.05)
        silent_url = f"http://{REPO_HOST}:{port}/libnvidia-container/stable/deb/amd64/"
        data = {**repo_data(repo_tree, fleet.os_release), "nvidia_container_repo_url": silent_url}
        started = time.monotonic()
        run = run_deploy(fleet, inventory(fleet, tmp_path, repo_tree, data), timeout=900)
        elapsed = time.monotonic() - started
    finally:
        server.kill()
        server.wait()
    # The one host failed (pyinfra then has no host left, and prints no results).
    assert run.returncode != 0
    assert "No hosts remaining!" in run.output
    # apt names the repository that did not answer; the run did not hang on it.
    assert f"{REPO_HOST}:{port}" in run.output, run.output[-6000:]
    assert elapsed < 600, elapsed
    # The lock is free again: a later run is not stuck behind this one.
    ssh_ok(fleet, host, "flock -w 5 /run/lock/gpufleet-apt.lock true")


def test_bad_group_data_refuses_every_host_once_without_a_traceback(
    fleet_factory: FleetFactory, repo_tree: RepoTree, tmp_path: Path
) -> None:
    fleet = fleet_factory(count=3)
    before = {host.name: ssh_ok(fleet, host, SNAPSHOT) for host in fleet.hosts}
    run = run_deploy(fleet, inventory(fleet, tmp_path, repo_tree, {"cuda_verison": "11.8"}))
    assert run.returncode != 0
    # Said once where the first host is refused and once in the run's summary; the other
    # hosts are named as refused for the same reasons, in the log and in the summary.
    assert run.output.count("cuda_verison is not a gpufleet data key") == 2, run.output[-4000:]
    assert run.output.count("refused for the same reasons as") == 2
    summary = run.output.split("--> gpufleet summary\n", 1)[1]
    assert summary.count("REFUSED          the same reasons as ") == 2
    assert "Traceback" not in run.output
    for host in fleet.hosts:
        assert ssh_ok(fleet, host, SNAPSHOT) == before[host.name]
