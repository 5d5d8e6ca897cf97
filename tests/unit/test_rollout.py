"""
rollout's command line: the dry run's pyinfra command, and inventories it cannot roll out (one
line on stderr, exit status 2, no traceback). pyinfra runs for real; hosts are @fake, or an
address on loopback where nothing listens.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from gpufleet import rollout
from gpufleet.cli import main

REPO_ROOT = Path(__file__).parents[2]
PYINFRA = [sys.executable, "-m", "pyinfra"]
DEPLOY = "gpufleet.driver_upgrade"
# A host that cannot be reached: nothing listens on port 1 of this machine.
UNREACHABLE = '("127.0.0.1", {"ssh_port": 1})'
# A @fake host running 535.183.01, pinned to 535.216.01 (its data has to be JSON for pyinfra's
# --json host list, so the scripted responses keep only the plain-text matchers).
REACHABLE = """(
        "@fake/gpu-01",
        {
            **FIXTURE_KEY_DATA,
            "nvidia_driver_version": "535.216.01",
            "fake_responses": {
                matcher: lines
                for matcher, lines in converged_ubuntu_2004().responses().items()
                if isinstance(matcher, str)
            },
            "fake_delay": 0,
        },
    )"""


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pyinfra writes pyinfra-debug.log where it runs; inventories import tests.fakehost.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))


def write_inventory(tmp_path: Path, hosts: str) -> Path:
    inventory = tmp_path / "fleet.py"
    inventory.write_text(
        f"from tests.fakehost import FIXTURE_KEY_DATA, converged_ubuntu_2004\n\nhosts = [{hosts}]\n"
    )
    return inventory


def run_cli(*arguments: str) -> Result:
    """`gpufleet ARGUMENTS`, run in-process."""
    return CliRunner().invoke(main, list(arguments))


def test_dry_run_runs_pyinfra_without_prompts_or_input(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[tuple[list[str], Any]] = []

    def run(command: list[str], stdin: Any = None, check: bool = True) -> Any:
        ran.append((command, stdin))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(rollout, "inventory_hosts", lambda inventory, args: [("gpu-01", 1)])
    monkeypatch.setattr(subprocess, "run", run)
    assert run_cli("rollout", "fleet.py", "--dry", "--", "--limit", "gpu-01").exit_code == 0
    assert ran == [
        (
            [*PYINFRA, "-y", "--dry", "--limit", "gpu-01", "fleet.py", DEPLOY],
            subprocess.DEVNULL,
        )
    ]


@pytest.mark.parametrize("dry", [[], ["--dry"]])
def test_a_missing_inventory_is_an_error(tmp_path: Path, dry: list[str]) -> None:
    missing = tmp_path / "missing.py"
    result = run_cli("rollout", str(missing), *dry)
    assert result.exit_code == 2
    assert (result.stdout, result.stderr) == (
        "",
        f"rollout: cannot read inventory {tmp_path}/missing.py: no such file\n",
    )


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("hosts = []\n", "rollout: inventory {inventory} has no hosts\n"),
        (
            'raise ValueError("no fleet here")\n',
            "rollout: cannot read inventory {inventory}: ValueError: no fleet here\n",
        ),
        (
            "hosts = [\n",
            "rollout: cannot read inventory {inventory}: SyntaxError: '[' was never closed\n",
        ),
    ],
)
def test_an_inventory_pyinfra_cannot_read_or_without_hosts_is_an_error(
    tmp_path: Path, source: str, error: str
) -> None:
    inventory = tmp_path / "fleet.py"
    inventory.write_text(source)
    result = run_cli("rollout", str(inventory))
    assert result.exit_code == 2
    assert (result.stdout, result.stderr) == ("", error.format(inventory=inventory))


def test_invalid_inventory_data_is_an_error_naming_the_host(tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path, '("@fake/gpu-01", {"upgrade_batch_size": "2"})')
    result = run_cli("rollout", str(inventory))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("rollout: @fake/gpu-01: ")
    assert "upgrade_batch_size" in result.stderr
    assert "Traceback" not in result.stderr


def test_batch_sizes_that_disagree_are_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = [("gpu-01", 1), ("gpu-02", 2)]
    monkeypatch.setattr(rollout, "inventory_hosts", lambda inventory, args: hosts)
    result = run_cli("rollout", "fleet.py")
    assert result.exit_code == 2
    assert result.stderr == (
        "rollout: hosts disagree on upgrade_batch_size ([1, 2]): set it for the whole "
        "inventory, or pass --batch-size\n"
    )


def dry_run(inventory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpufleet", "rollout", str(inventory), "--dry"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_dry_run_reports_an_unreachable_host(tmp_path: Path) -> None:
    run = dry_run(write_inventory(tmp_path, UNREACHABLE))
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert "Traceback" not in output
    assert "[127.0.0.1] Could not connect" in output
    assert run.stderr.endswith("rollout: the dry run failed, see pyinfra's output above\n")


def test_a_dry_run_plans_the_reachable_hosts_and_reports_the_others(tmp_path: Path) -> None:
    # pyinfra asks whether to go on when some hosts connect and others do not.
    run = dry_run(write_inventory(tmp_path, f"{REACHABLE}, {UNREACHABLE}"))
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert "Traceback" not in output and "EOFError" not in output
    assert "[127.0.0.1]" in output and "Could not connect" in output
    assert (
        "[@fake/gpu-01] driver 535.183.01 -> 535.216.01; GPU users: none; no module change"
        in output
    )
    assert run.stderr.endswith("rollout: the dry run failed, see pyinfra's output above\n")
