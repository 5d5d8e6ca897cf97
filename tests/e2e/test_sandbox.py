"""
The README's sandbox commands, exactly as written: a kept sandbox converges its host, ends with the
verification's verdict (no GPU on this host's bus), lets pyinfra reach the host through `exec`,
and `stop` removes it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.fleet import PYINFRA, REPO_ROOT
from testbed.repos import RepoTree

pytestmark = pytest.mark.e2e

SANDBOX = [sys.executable, "-m", "testbed.sandbox"]
UP = "--> The host is up at "
VERDICT = "BROKEN at hardware: 0 NVIDIA GPU(s) on the PCI bus, expected at least 1"


def read_until(process: subprocess.Popen[str], marker: str, timeout: float) -> str:
    """What the process printed up to the line holding ``marker``."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"no {marker!r} within {timeout}s:\n" + "".join(seen)[-6000:])


def test_a_kept_sandbox_is_verified_reached_with_exec_and_stopped(
    repo_tree: RepoTree, tmp_path: Path
) -> None:
    # repo_tree: the mirrors are built once for the session, the sandbox reuses them.
    env = {**os.environ, "GPUFLEET_SANDBOX_STATE": str(tmp_path / "sandbox.json")}
    kept = subprocess.Popen(
        [*SANDBOX, "--keep"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = read_until(kept, UP, timeout=1500)
        assert "second run: nothing to change" in output
        # The fleet's known_hosts holds the host's keys before pyinfra's first connect.
        assert "Added host key" not in output and "Failed to load host keys" not in output
        assert VERDICT in output, output[-6000:]
        assert "    hardware   broken: 0 NVIDIA GPU(s) on the PCI bus" in output

        reached = subprocess.run(
            [*SANDBOX, "exec", "--", str(PYINFRA), "-y", "inventories/sandbox/inventory.py",
             "deploys/verify.py"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        log = reached.stdout + reached.stderr
        assert "Error reading SSH protocol banner" not in log
        assert "Failed to load host keys" not in log
        assert VERDICT in log, log[-6000:]
        assert "--> gpufleet summary" in log

        stopped = subprocess.run(
            [*SANDBOX, "stop"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
        )
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        rest, _ = kept.communicate(timeout=180)
        assert kept.returncode == 0, rest[-4000:]
        assert "Sandbox host stopped; nothing is left behind." in rest
        assert not (tmp_path / "sandbox.json").exists()
    finally:
        if kept.poll() is None:
            kept.terminate()
            kept.wait(timeout=180)
