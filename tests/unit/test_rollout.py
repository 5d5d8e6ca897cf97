"""
rollout's command line: the driver options and their checks, the batches and what it says of
each, the report's groups, the warning about the inventory's pin, the dry run's pyinfra command,
and inventories it cannot roll out (one line on stderr, exit status 2, no traceback). Where
pyinfra runs for real, hosts are @fake, or an address on loopback where nothing listens;
elsewhere FakePyinfra answers for it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from gpufleet.cli import main
from gpufleet.deploys.verify import result_path
from gpufleet.rollout_state import rollout_lock

REPO_ROOT = Path(__file__).parents[2]
PYINFRA = [sys.executable, "-m", "pyinfra"]
DEPLOY = "gpufleet.driver_upgrade"
ROLLOUT_HOST_FACT = "gpufleet.facts.slurm.RolloutHost"
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


@dataclass
class FakePyinfra:
    """
    pyinfra as rollout runs it: the host list of an inventory of ``hosts`` (name: data), and
    runs of the deploy in which the ``failing`` hosts fail, those of them in ``unverified`` in
    the verification (after writing its result, as it does whatever the verdict).
    """

    hosts: dict[str, dict[str, Any]]
    failing: frozenset[str] = frozenset()
    unverified: frozenset[str] = frozenset()
    # Hosts with the operator's skip file.
    skip_files: frozenset[str] = frozenset()
    commands: list[list[str]] = field(default_factory=list)

    def run(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.commands.append(command)
        if command[-1] == ROLLOUT_HOST_FACT:
            facts = {
                name: {
                    "hostname": name,
                    "skip_file": name in self.skip_files,
                    "driver_version": "535.183.01",
                }
                for name in self.hosts
            }
            output = json.dumps({ROLLOUT_HOST_FACT: facts})
            return subprocess.CompletedProcess(command, 0, output, "")
        if command[-1] == "debug-inventory":
            listing = [{"name": name, "data": data} for name, data in self.hosts.items()]
            return subprocess.CompletedProcess(command, 0, json.dumps(listing), "")
        if "--dry" in command:
            return subprocess.CompletedProcess(command, 0, "", "")
        batch = limited_hosts(command)
        for host in self.unverified.intersection(batch):
            path = result_path("results", host)
            path.parent.mkdir(exist_ok=True)
            path.write_text("{}")
        failed = sorted(self.failing.intersection(batch))
        if failed == sorted(batch):
            # pyinfra stops at "No hosts remaining!", before its JSON results.
            return subprocess.CompletedProcess(command, 1, "", "")
        results = {"results": {"failed_hosts": failed}}
        return subprocess.CompletedProcess(command, 1 if failed else 0, json.dumps(results), "")

    def batches(self) -> list[list[str]]:
        """The --limit hosts of each run of the deploy."""
        return [limited_hosts(command) for command in self.commands if command[-1] == DEPLOY]


def limited_hosts(command: list[str]) -> list[str]:
    return [command[i + 1] for i, argument in enumerate(command) if argument == "--limit"]


def fake_pyinfra(
    monkeypatch: pytest.MonkeyPatch,
    hosts: dict[str, dict[str, Any]],
    failing: frozenset[str] = frozenset(),
    unverified: frozenset[str] = frozenset(),
) -> FakePyinfra:
    """FakePyinfra for the inventory fleet.py (a file, as rollout checks; it is never read)."""
    Path("fleet.py").touch()
    pyinfra = FakePyinfra(hosts, failing, unverified)
    monkeypatch.setattr(subprocess, "run", pyinfra.run)
    return pyinfra


def fleet(count: int, **data: Any) -> dict[str, dict[str, Any]]:
    """``count`` hosts gpu-01, gpu-02, ... with the same ``data``."""
    return {f"gpu-{index:02}": dict(data) for index in range(1, count + 1)}


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (
            ["--driver-version", "470"],
            "Invalid value for '--driver-version': '470' is not a driver version; "
            "use e.g. '580.159.04'",
        ),
        (
            ["--driver-version", "580.159.04", "--branch", "R580"],
            "Invalid value for '--branch': 'R580' is not a driver branch; use e.g. '580'",
        ),
        (["--branch", "580"], "--branch needs --driver-version: name the release to roll out"),
    ],
    ids=["version", "branch", "branch-alone"],
)
def test_driver_options_of_the_wrong_shape_are_usage_errors(
    monkeypatch: pytest.MonkeyPatch, options: list[str], error: str
) -> None:
    pyinfra = fake_pyinfra(monkeypatch, fleet(1))
    result = run_cli("rollout", "fleet.py", *options)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == f"Error: {error}"
    assert pyinfra.commands == []


def test_driver_options_become_pyinfra_data_for_every_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pyinfra = fake_pyinfra(monkeypatch, fleet(2, nvidia_driver_version="535.216.01"))
    result = run_cli(
        "rollout", "fleet.py", "--driver-version", "580.159.04", "--branch", "580",
        "--batch-size", "1", "--", "--ssh-user", "ops",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    override = ["--data", "nvidia_driver_version=580.159.04"]
    override += ["--data", "nvidia_driver_branch=580"]
    # The host list is the inventory's own, pins included.
    assert pyinfra.commands == [
        [*PYINFRA, "--json", "--ssh-user", "ops", "fleet.py", "debug-inventory"],
        [*PYINFRA, "--json", "--ssh-user", "ops", "fleet.py", "fact", ROLLOUT_HOST_FACT],
        *(
            [*PYINFRA, "-y", "--json", "--limit", host, "--ssh-user", "ops", *override]
            + ["fleet.py", DEPLOY]
            for host in ("gpu-01", "gpu-02")
        ),
    ]


def test_batches_are_announced_and_the_first_failed_one_stops_the_rollout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pyinfra = fake_pyinfra(
        monkeypatch, fleet(5, upgrade_batch_size=2), failing=frozenset({"gpu-04"})
    )
    result = run_cli("rollout", "fleet.py")
    assert result.exit_code == 1
    assert pyinfra.batches() == [["gpu-01", "gpu-02"], ["gpu-03", "gpu-04"]]
    assert result.stdout.splitlines() == [
        "batch 1/3: gpu-01, gpu-02",
        "batch 1/3: done",
        "batch 2/3: gpu-03, gpu-04",
        "batch 2/3: failed (gpu-04)",
        "rollout: stopped: 1 host(s) failed; upgrade_max_failed is 1",
        "done (3): gpu-01, gpu-02, gpu-03",
        "upgraded, verification failed (0): -",
        "failed (1): gpu-04",
        "not reached (1): gpu-05",
        "skipped (0): -",
        "gpu-04: the upgrade failed",
    ]
    assert result.stderr == ""


def test_a_rollout_of_healthy_hosts_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_pyinfra(monkeypatch, fleet(3))
    result = run_cli("rollout", "fleet.py", "--batch-size", "2")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "batch 1/2: gpu-01, gpu-02",
        "batch 1/2: done",
        "batch 2/2: gpu-03",
        "batch 2/2: done",
        "done (3): gpu-01, gpu-02, gpu-03",
        "upgraded, verification failed (0): -",
        "failed (0): -",
        "not reached (0): -",
        "skipped (0): -",
    ]


def test_a_host_whose_verification_failed_after_the_change_is_told_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # gpu-01 is refused, before any verification; gpu-03's result is from an earlier run.
    result_path("results", "gpu-03").parent.mkdir()
    result_path("results", "gpu-03").write_text("{}")
    failing = frozenset({"gpu-01", "gpu-02", "gpu-03"})
    fake_pyinfra(monkeypatch, fleet(4), failing, unverified=frozenset({"gpu-02"}))
    result = run_cli("rollout", "fleet.py", "--batch-size", "4")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "batch 1/1: gpu-01, gpu-02, gpu-03, gpu-04",
        "batch 1/1: failed (gpu-01, gpu-02, gpu-03)",
        "done (1): gpu-04",
        "upgraded, verification failed (1): gpu-02",
        "failed (2): gpu-01, gpu-03",
        "not reached (0): -",
        "skipped (0): -",
        "gpu-01: the upgrade failed",
        "gpu-02: upgraded, verification failed",
        "gpu-03: the upgrade failed",
    ]


def test_a_batch_whose_only_host_failed_verification_is_told_apart_without_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_pyinfra(
        monkeypatch, fleet(2), failing=frozenset({"gpu-01"}), unverified=frozenset({"gpu-01"})
    )
    result = run_cli("rollout", "fleet.py")
    assert result.exit_code == 1
    assert result.stdout.splitlines()[1:] == [
        "batch 1/2: failed (gpu-01)",
        "rollout: stopped: 1 host(s) failed; upgrade_max_failed is 1",
        "done (0): -",
        "upgraded, verification failed (1): gpu-01",
        "failed (0): -",
        "not reached (1): gpu-02",
        "skipped (0): -",
        "gpu-01: upgraded, verification failed",
    ]


def test_an_override_the_inventory_does_not_pin_ends_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts = {
        "gpu-01": {"nvidia_driver_version": "470.182.03"},
        "gpu-02": {"nvidia_driver_version": "470.239.06"},
        "gpu-03": {"nvidia_driver_version": "470.182.03"},
        "gpu-04": {"nvidia_driver_version": "535.183.01"},
        "gpu-05": {},
        "gpu-06": {"nvidia_driver_version": "470.182.03"},
    }
    # gpu-06 is not reached: the inventory's pin is still what it runs.
    fake_pyinfra(
        monkeypatch, hosts, frozenset({"gpu-03", "gpu-06"}), unverified=frozenset({"gpu-03"})
    )
    result = run_cli("rollout", "fleet.py", "--driver-version", "470.239.06", "--batch-size", "5")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "warning: the inventory still pins nvidia_driver_version = 470.182.03 for gpu-01, "
        "gpu-03: the next gpu_host run would downgrade them; update the inventory",
        "warning: the inventory still pins nvidia_driver_version = 535.183.01 for gpu-04: the "
        "next gpu_host run would upgrade them; update the inventory",
        "warning: the inventory pins no nvidia_driver_version for gpu-05: the next gpu_host run "
        "would install gpufleet's release of the branch, which may not be 470.239.06; pin "
        "470.239.06 in the inventory",
    ]


def test_a_rollout_of_the_inventorys_pin_has_no_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_pyinfra(monkeypatch, fleet(1, nvidia_driver_version="470.239.06"))
    for options in ([], ["--driver-version", "470.239.06"]):
        result = run_cli("rollout", "fleet.py", *options)
        assert (result.exit_code, result.stderr) == (0, "")


def test_dry_run_lists_the_batches_then_runs_pyinfra_without_prompts_or_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[tuple[list[str], Any]] = []
    pyinfra = fake_pyinfra(monkeypatch, fleet(3, upgrade_batch_size=2))

    def run(command: list[str], stdin: Any = None, **kwargs: Any) -> Any:
        ran.append((command, stdin))
        return pyinfra.run(command)

    monkeypatch.setattr(subprocess, "run", run)
    result = run_cli(
        "rollout", "fleet.py", "--dry", "--driver-version", "580.159.04", "--", "--limit", "gpu-01"
    )
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["batch 1/2: gpu-01, gpu-02", "batch 2/2: gpu-03"]
    override = ["--data", "nvidia_driver_version=580.159.04"]
    assert ran[-1] == (
        [*PYINFRA, "-y", "--dry", "--limit", "gpu-01", *override, "fleet.py", DEPLOY],
        subprocess.DEVNULL,
    )


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
    hosts = {"gpu-01": {"upgrade_batch_size": 1}, "gpu-02": {"upgrade_batch_size": 2}}
    fake_pyinfra(monkeypatch, hosts)
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
        "[@fake/gpu-01] driver upgrade 535.183.01 -> 535.216.01; GPU users: none; "
        "no module change" in output
    )
    assert run.stderr.endswith("rollout: the dry run failed, see pyinfra's output above\n")


def test_max_failed_is_a_failure_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = fleet(4, upgrade_max_failed=2)
    pyinfra = fake_pyinfra(monkeypatch, hosts, failing=frozenset({"gpu-01", "gpu-03"}))
    result = run_cli("rollout", "fleet.py")
    assert result.exit_code == 1
    assert pyinfra.batches() == [["gpu-01"], ["gpu-02"], ["gpu-03"]]
    assert "rollout: stopped: 2 host(s) failed; upgrade_max_failed is 2" in result.stdout
    assert "not reached (1): gpu-04" in result.stdout


def test_skipped_hosts_are_never_touched_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = fleet(3)
    hosts["gpu-01"]["upgrade_skip"] = True
    pyinfra = fake_pyinfra(monkeypatch, hosts)
    pyinfra.skip_files = frozenset({"gpu-03"})
    result = run_cli("rollout", "fleet.py")
    assert result.exit_code == 0
    assert pyinfra.batches() == [["gpu-02"]]
    assert result.stdout.splitlines()[-4:] == [
        "not reached (0): -",
        "skipped (2): gpu-01, gpu-03",
        "gpu-01: skipped: upgrade_skip is set in its data",
        "gpu-03: skipped: /etc/gpufleet/skip-upgrade exists on the host",
    ]


def test_max_unavailable_as_a_percentage_sizes_the_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    pyinfra = fake_pyinfra(monkeypatch, fleet(5, upgrade_max_unavailable="40%"))
    assert run_cli("rollout", "fleet.py").exit_code == 0
    assert pyinfra.batches() == [["gpu-01", "gpu-02"], ["gpu-03", "gpu-04"], ["gpu-05"]]


def test_an_interrupted_rollout_is_taken_up_and_done_hosts_are_not_run_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The controller died while gpu-02 was upgrading: the record says so.
    state = tmp_path / ".gpufleet" / "rollout-580.159.04.json"
    state.parent.mkdir()
    state.write_text(
        json.dumps(
            {
                "target": "580.159.04",
                "started_at": "2026-12-01T03:00:00+00:00",
                "hosts": {
                    "gpu-01": {"phase": "done"},
                    "gpu-02": {"phase": "upgrading"},
                    "gpu-03": {"phase": "pending"},
                },
            }
        )
    )
    pyinfra = fake_pyinfra(monkeypatch, fleet(3))
    result = run_cli("rollout", "fleet.py", "--driver-version", "580.159.04")
    assert result.exit_code == 0, result.output
    assert pyinfra.batches() == [["gpu-02"], ["gpu-03"]]
    assert "done (3): gpu-01, gpu-02, gpu-03" in result.stdout
    record = json.loads(state.read_text())
    assert [phase for phase, _ in record["hosts"]["gpu-02"]["history"]] == ["upgrading", "done"]

    status = run_cli("rollout", "fleet.py", "--status")
    lines = status.stdout.splitlines()
    assert lines[0] == (
        f"rollout of 580.159.04, started 2026-12-01T03:00:00+00:00 ({state}): 3 done"
    )
    assert lines[1] == "  gpu-01 done since 2026-12-01T03:00:00+00:00"
    assert lines[2].startswith("  gpu-02 done since 20")


def test_a_second_rollout_of_the_same_inventory_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_pyinfra(monkeypatch, fleet(1))
    with rollout_lock("fleet.py"):
        result = run_cli("rollout", "fleet.py")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"rollout: another rollout of fleet.py is running (pid {os.getpid()}, since "
    )
    assert result.stderr.endswith(
        "); wait for it, or stop it and run the same command again to take it up\n"
    )
