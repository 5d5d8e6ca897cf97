"""What a rollout knows of Slurm: node states, gpufleet's drain reason, its rules and batches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gpufleet import rollout
from gpufleet.facts.slurm import parse_slurm_nodes
from gpufleet.rollout import batch_plan, drain_update, next_batch, resume_update
from gpufleet.rollout_state import RolloutFile
from gpufleet.settings import read_settings
from gpufleet.stack.slurm import (
    drain_reason,
    drained_by_gpufleet,
    node_unavailable,
    unavailable_budget,
)
from tests.unit.test_verify import fixture_lines


@pytest.mark.parametrize(
    ("state", "unavailable"),
    [
        # sinfo(1) NODE STATE CODES, long form (%T), with its flag suffixes.
        ("idle", False),
        ("mixed", False),
        ("allocated", False),
        ("completing", False),
        ("drained", True),
        ("draining", True),
        ("down", True),
        ("down*", True),
        ("idle*", True),
        ("idle~", False),
        ("allocated+", False),
        ("power_down", True),
        ("fail", True),
        ("maint", True),
        ("unknown", True),
        ("reserved", False),
    ],
)
def test_node_states_out_of_service(state: str, unavailable: bool) -> None:
    assert node_unavailable(state) is unavailable


@pytest.mark.parametrize(
    ("value", "fleet_size", "hosts"),
    [("2", 10, 2), ("25%", 10, 2), ("25%", 3, 1), ("100%", 6, 6), ("50%", 7, 3)],
)
def test_max_unavailable_counts_or_rounds_a_percentage_down(
    value: str, fleet_size: int, hosts: int
) -> None:
    assert unavailable_budget(value, fleet_size) == hosts


def test_drain_reason_names_the_driver_change_and_marks_gpufleets_nodes() -> None:
    reason = drain_reason("470.182.03", "470.239.06")
    assert reason == "gpufleet: driver 470.182.03 -> 470.239.06"
    assert drained_by_gpufleet(reason)
    assert not drained_by_gpufleet("disk swap [ops@2026-12-01T02:00:00]")
    assert not drained_by_gpufleet(None)
    assert drain_reason(None, "580.159.04") == "gpufleet: driver none -> 580.159.04"


def test_scontrol_updates_are_quoted_words() -> None:
    assert drain_update("gpu-01", "gpufleet: driver 470.182.03 -> 470.239.06") == (
        "NodeName=gpu-01 State=DRAIN 'Reason=gpufleet: driver 470.182.03 -> 470.239.06'"
    )
    assert resume_update("gpu-01") == "NodeName=gpu-01 State=RESUME"


def test_hosts_out_of_service_go_first_and_count_against_the_limit() -> None:
    pending = ["a", "b", "c", "d", "e"]
    # c was drained by hand: upgrading it takes nothing away, and it fills one of two places
    # for as long as it stays drained.
    assert next_batch(pending, {"c"}, 2) == ["c", "a"]
    assert batch_plan(pending, {"c"}, 2) == [["c", "a"], ["b"], ["d"], ["e"]]
    # Two hosts out of service outside the rollout leave no room under a limit of 2.
    assert next_batch(["a", "b"], {"x", "y"}, 2) == []
    assert batch_plan(["a", "b"], set(), 1) == [["a"], ["b"]]


class AnsweringFleet:
    """The rollout's view of a fleet of one Slurm host, whose reads answer ``answers`` in turn
    (parsed from real sinfo/squeue outputs)."""

    def __init__(self, answers: list[list[str]]) -> None:
        self.answers = [parse_slurm_nodes(lines) for lines in answers]
        self.nodes = {"gpu-01": "gf7322f0-h1"}
        self.settings = {"gpu-01": read_settings({"gpu_scheduler": "slurm"})}

    def slurm(self, hosts: list[str], avoid: Sequence[str] = ()) -> Any:
        return self.answers.pop(0)


def test_a_drained_node_slurm_does_not_answer_for_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(rollout, "POLL_SECONDS", 0)
    # The controller is down at the first read, then h1's job still runs, then it is done.
    running = fixture_lines("facts/slurm-nodes-19.05.5.txt")
    finished = [line for line in running if not line.startswith("job|")]
    fleet = AnsweringFleet(
        [fixture_lines("facts/slurm-nodes-no-controller-19.05.5.txt"), running, finished]
    )
    record = RolloutFile.open(str(tmp_path / "fleet.py"), "580.159.04", ["gpu-01"])
    upgrade = rollout.Upgrade(fleet, record, [], 1)  # type: ignore[arg-type]
    assert upgrade.wait_for_jobs("batch 1/1", ["gpu-01"], ["gpu-01"]) == ["gpu-01"]
    assert fleet.answers == []
    assert capsys.readouterr().out == (
        "batch 1/1: waiting 0 s for the drained nodes' jobs: gpu-01: no answer "
        "(slurm_load_partitions: Unable to contact slurm controller (connect failure); "
        "slurm_load_node error: Unable to contact slurm controller (connect failure))\n"
    )


def test_a_hostname_is_a_node_name_only_in_a_node_names_shape() -> None:
    assert rollout.node_name("gpu-01") == "gpu-01"
    assert rollout.node_name("gpu 01;reboot") is None
    assert rollout.node_name(None) is None
