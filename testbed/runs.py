"""
Running gpufleet's deploys on a test fleet and reading what they did, for the end-to-end tests,
the sandbox and the benchmarks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpufleet.operations.packages import TRANSACTION_LOCK
from testbed.fleet import Fleet, TestHost
from testbed.os_releases import OsRelease
from testbed.repos import RepoTree
from testbed.rootfs import os_release


def repo_data(repo: RepoTree, release: OsRelease | str) -> dict[str, Any]:
    """Inventory data pointing gpufleet at the stand-in NVIDIA repositories (an explicit mirror)
    for hosts of ``release``: its CUDA directory, signed by that directory's key, and the
    container repository."""
    directory = os_release(release).cuda_directory
    return {
        "nvidia_cuda_repo_url": repo.cuda_repo_url(directory),
        "nvidia_cuda_repo_key_url": repo.cuda_key_url(directory),
        "nvidia_cuda_repo_key_fingerprint": repo.cuda_key_fingerprint(directory),
        "nvidia_container_repo_url": repo.container_repo_url,
        "nvidia_container_repo_key_url": repo.container_key_url,
        "nvidia_container_repo_key_fingerprint": repo.container_key_fingerprint,
    }


@dataclass
class DeployRun:
    """One `pyinfra -y --json` run: its process and, when it got that far, its results."""

    process: subprocess.CompletedProcess[str]
    results: dict[str, Any] | None

    @property
    def output(self) -> str:
        return self.process.stdout + self.process.stderr

    @property
    def returncode(self) -> int:
        return self.process.returncode

    def _operations_by_host(self, outcome: str) -> dict[str, list[str]]:
        """Host address -> names of the operations with this outcome ("success", "error")."""
        by_host: dict[str, list[str]] = {}
        for operation in (self.results or {}).get("operations", []):
            for host in operation[outcome]:
                by_host.setdefault(host, []).append(operation["name"])
        return by_host

    def changed(self) -> dict[str, list[str]]:
        """Host address -> names of the operations that changed something there."""
        return self._operations_by_host("success")

    def commands_sent(self) -> Counter[str]:
        """
        Host address -> how many shell commands pyinfra sent it, fact reads included (each one a
        round trip). Only a `--debug` run logs its commands.
        """
        return Counter(re.findall(r"Running command on (\S+): \(pty=", self.process.stderr))

    def failed(self) -> dict[str, list[str]]:
        """Host address -> names of the operations that failed there."""
        return self._operations_by_host("error")


def run_deploy(
    fleet: Fleet,
    inventory: Path,
    *options: str,
    deploy: str = "deploys/gpu_host.py",
    timeout: float = 1800,
) -> DeployRun:
    """`pyinfra -y --json [options] inventory deploy` in the fleet's controller namespace."""
    process = fleet.run_pyinfra("--json", *options, str(inventory), deploy, timeout=timeout)
    try:
        payload = json.loads(process.stdout)
    except json.JSONDecodeError:
        payload = {}
    return DeployRun(process, payload.get("results"))


def kill_while_running(
    fleet: Fleet,
    host: TestHost,
    controller: subprocess.Popen[bytes],
    process: str,
    timeout: float = 900,
) -> None:
    """
    SIGKILL the controller (started with start_new_session) the moment ``process`` runs on the
    host: a watcher polls there every 50 ms, so short-lived steps are not missed between polls.
    """
    wait_for_process = f"until pgrep -x {shlex.quote(process)} >/dev/null; do sleep 0.05; done"
    watcher = subprocess.Popen(
        fleet.ssh_command(host, wait_for_process),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while watcher.poll() is None:
            if controller.poll() is not None:
                raise AssertionError(f"the run ended before {process} ran on {host.name}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{process} never ran on {host.name} in {timeout:.0f}s")
            time.sleep(0.05)
    finally:
        if watcher.poll() is None:
            watcher.kill()
        watcher.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(controller.pid, signal.SIGKILL)
        controller.wait()


def wait_for_package_transaction(fleet: Fleet, host: TestHost, timeout: int = 600) -> None:
    """Wait until no gpufleet package transaction runs on the host (it outlives its controller)."""
    result = fleet.ssh(host, f"flock -w {timeout} {TRANSACTION_LOCK} true")
    assert result.returncode == 0, f"the package transaction on {host.name} did not end"
