"""What a rollout knows of Slurm: node states, gpufleet's drain reason, its rules and batches."""

from __future__ import annotations

import pytest

from gpufleet.rollout import batch_plan, drain_update, next_batch, resume_update
from gpufleet.stack.slurm import (
    drain_reason,
    drained_by_gpufleet,
    node_unavailable,
    unavailable_budget,
)


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
