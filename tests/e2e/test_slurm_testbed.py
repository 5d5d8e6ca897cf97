"""
The test bed's Slurm cluster (testbed/slurm.py) on booted Ubuntu 20.04 hosts, with Ubuntu's own
Slurm 19.05: a job runs where it was sent and completes, a node drained by hand takes no job
and returns to service when resumed. The driver rollout's Slurm tests stand on this.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from testbed.fleet import FleetFactory
from testbed.slurm import (
    SlurmCluster,
    drain_node,
    jobs_on_node,
    node_info,
    resume_node,
    start_slurm,
    submit_job,
    wait_for_job,
    wait_for_node,
)

pytestmark = pytest.mark.e2e

JOB_SECONDS = 5
DRAIN_REASON = "gpufleet test: drained by hand"


def test_slurm_runs_a_job_on_its_node_and_drains_by_hand(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(count=3)
    controller, first, second = fleet.hosts
    cluster: SlurmCluster = start_slurm(fleet, controller, [first, second])
    node1, node2 = cluster.node_name(first), cluster.node_name(second)
    assert {node1, node2} == {first.name, second.name}  # each node is its host's short name
    # Every host has the client tools and the cluster's munge key: the rollout's scontrol runs
    # on the GPU hosts themselves, as root.
    for host in (first, second):
        assert node_info(fleet, cluster, host, on=host).state == "IDLE"

    job = submit_job(fleet, cluster, first, f"sleep {JOB_SECONDS}")
    running = wait_for_job(fleet, cluster, job, {"RUNNING"})
    assert running.node_list == node1
    assert jobs_on_node(fleet, cluster, first, on=first) == [job]
    assert jobs_on_node(fleet, cluster, second) == []
    done = wait_for_job(fleet, cluster, job, {"COMPLETED"}, timeout=JOB_SECONDS + 60)
    assert done.exit_code == "0:0"
    assert done.node_list == node1
    assert done.start_time is not None and done.end_time is not None
    assert done.end_time - done.start_time >= timedelta(seconds=JOB_SECONDS)
    assert jobs_on_node(fleet, cluster, first) == []

    drain_node(fleet, cluster, second, DRAIN_REASON)
    # As the rollout reads it: on the node itself.
    drained = node_info(fleet, cluster, second, on=second)
    assert "DRAIN" in drained.state_flags, drained
    assert drained.reason == DRAIN_REASON
    assert drained.reason_user == "root"
    # A drained node starts no job: one sent there waits for it.
    waiting = submit_job(fleet, cluster, second, "true")
    pending = wait_for_job(
        fleet, cluster, waiting, {"PENDING"}, until=lambda record: record.reason != "None"
    )
    assert pending.reason.startswith("ReqNodeNotAvail") and node2 in pending.reason, pending

    resume_node(fleet, cluster, second)
    resumed = wait_for_job(fleet, cluster, waiting, {"COMPLETED"})
    assert (resumed.node_list, resumed.exit_code) == (node2, "0:0")
    idle = wait_for_node(fleet, cluster, second, lambda node: node.state == "IDLE", "idle")
    assert "DRAIN" not in idle.state_flags
    assert idle.reason is None
