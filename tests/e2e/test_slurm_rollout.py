"""
A driver rollout over a real Slurm cluster (Ubuntu 20.04's slurm-wlm and munge): six GPU hosts
as compute nodes and one controller. The rollout drains each node, waits for its jobs, changes
the driver, verifies and resumes only the nodes it drained, under upgrade_max_unavailable and
upgrade_max_failed; a killed controller is taken up by the same command.
"""

from __future__ import annotations

import re
import subprocess
import threading
from datetime import datetime
from pathlib import Path

import pytest

from testbed.fleet import REPO_ROOT, Fleet, FleetFactory, TestHost
from testbed.repos import RepoTree
from testbed.runs import kill_while_running, wait_for_package_transaction
from testbed.slurm import SlurmCluster, drain_node, node_info, start_slurm, submit_job, wait_for_job
from tests.e2e.test_driver_upgrade import (
    NEW,
    OLD,
    converged,
    rollout_command,
    running_driver,
    set_standin,
    write_inventory,
)
from tests.e2e.test_gpu_host_deploy import ssh_ok

pytestmark = pytest.mark.e2e

HAND_REASON = "disk swap"
GPUFLEET_REASON = f"gpufleet: driver {OLD} -> {NEW}"
# dpkg.log's line for the driver change: "2026-12-07 01:02:03 upgrade libnvidia-compute-470:amd64
# 470.182.03-0ubuntu1 470.239.06-0ubuntu1".
DRIVER_CHANGE = re.compile(
    rf"^(\S+ \S+) upgrade libnvidia-compute-470:amd64 {re.escape(OLD)}\S* {re.escape(NEW)}",
    re.MULTILINE,
)


def rollout(fleet: Fleet, inventory: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        rollout_command(fleet, inventory, "--driver-version", NEW, *options),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip


def driver_changes(fleet: Fleet, host: TestHost) -> list[datetime]:
    """When dpkg changed the driver from OLD to NEW on the host, each time."""
    log = ssh_ok(fleet, host, "cat /var/log/dpkg.log")
    return [datetime.fromisoformat(stamp) for stamp in DRIVER_CHANGE.findall(log)]


class NodeSampler:
    """Samples, twice a second on the controller, how many GPU nodes are out of service."""

    def __init__(self, fleet: Fleet, cluster: SlurmCluster) -> None:
        self.fleet, self.cluster = fleet, cluster
        self.samples: list[dict[str, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        nodes = set(self.cluster.node_names.values())
        while not self.stop.wait(0.5):
            result = self.fleet.ssh(self.cluster.controller, "sinfo -h -N -o '%N|%T|%E'")
            states = {}
            for line in result.stdout.splitlines():
                name, state, reason = line.split("|", 2)
                if name in nodes:
                    states[name] = f"{state}|{reason}"
            self.samples.append(states)

    def __enter__(self) -> NodeSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def most_drained(self, reason_prefix: str = "") -> int:
        """The most nodes drained (or draining) at once, of those whose reason starts so."""
        return max(
            sum(
                1
                for value in sample.values()
                if value.split("|")[0].startswith("drain")
                and value.split("|")[1].startswith(reason_prefix)
            )
            for sample in self.samples
        )


def test_a_slurm_rollout_waits_for_jobs_keeps_its_rules_and_is_taken_up_after_a_kill(
    fleet_factory: FleetFactory, repo_tree: RepoTree, cache_dir: Path, tmp_path: Path
) -> None:
    fleet = fleet_factory(count=7)
    controller, gpu_hosts = fleet.hosts[0], fleet.hosts[1:]
    converged(fleet, repo_tree, cache_dir, tmp_path, gpu_hosts)
    cluster = start_slurm(fleet, controller, gpu_hosts)
    first, fourth, fifth, sixth = gpu_hosts[0], gpu_hosts[3], gpu_hosts[4], gpu_hosts[5]
    # The sixth node was drained by hand before the rollout; the fourth's driver will not come
    # up after the change, so its verification fails.
    drain_node(fleet, cluster, sixth, HAND_REASON)
    set_standin(fleet, fourth, {"mode": "no-driver"})
    inventory = write_inventory(
        fleet, tmp_path / "slurm.py", repo_tree, gpu_hosts,
        gpu_scheduler="slurm", upgrade_max_unavailable=2, upgrade_max_failed=1,
    )  # fmt: skip
    job = submit_job(fleet, cluster, first, "sleep 30")
    wait_for_job(fleet, cluster, job, {"RUNNING"})

    dry = rollout(fleet, inventory, "--dry")
    sixth_node = cluster.node_name(sixth)
    assert dry.stdout.startswith(
        f"batch 1/5: {sixth.address}, {first.address}\nbatch 2/5: {gpu_hosts[1].address}\n"
    ), dry.stdout + dry.stderr
    assert f"Slurm node {sixth_node}: drained ({HAND_REASON}); jobs: none" in dry.stdout
    assert f"; jobs: {job} (root, gpufleet-test)" in dry.stdout
    assert node_info(fleet, cluster, first).state.startswith(("MIXED", "ALLOCATED"))

    # Run 1: stops at the failure budget, after the fourth host.
    with NodeSampler(fleet, cluster) as sampler:
        run = rollout(fleet, inventory)
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    names = [host.address for host in gpu_hosts]
    assert f"done (4): {names[0]}, {names[1]}, {names[2]}, {names[5]}" in run.stdout, output
    assert f"upgraded, verification failed (1): {names[3]}" in run.stdout
    assert f"not reached (1): {names[4]}" in run.stdout
    assert "rollout: stopped: 1 host(s) failed; upgrade_max_failed is 1" in run.stdout
    assert f"waiting 0 s for the drained nodes' jobs: {names[0]}: {job} (root, gpufleet-test)" in (
        run.stdout
    )
    # The job finished, with its exit status, before the first package change on its host.
    finished = wait_for_job(fleet, cluster, job, {"COMPLETED"})
    assert finished.exit_code == "0:0"
    (changed,) = driver_changes(fleet, first)
    assert finished.end_time is not None and finished.end_time < changed
    # gpufleet never had more than two nodes out of service, its own and the one by hand.
    assert sampler.most_drained() <= 2
    assert sampler.most_drained("gpufleet: ") >= 1
    # The failed host stays drained with gpufleet's reason; the one drained by hand is upgraded
    # and left drained with its own reason; the others are back in service.
    assert node_info(fleet, cluster, fourth).reason == (
        f"{GPUFLEET_REASON} failed: upgraded, verification failed"
    )
    assert node_info(fleet, cluster, sixth).reason == HAND_REASON
    assert (
        f"{names[5]}: its node was drained ({HAND_REASON}) before the rollout and is left so"
        in (run.stdout)
    )
    assert [running_driver(fleet, host) for host in gpu_hosts[:3]] == [NEW] * 3
    assert running_driver(fleet, sixth) == NEW
    for host in gpu_hosts[:3]:
        assert node_info(fleet, cluster, host).state == "IDLE"

    # Run 2, killed while dpkg changes the fifth host's driver; run 3 takes it up.
    set_standin(fleet, fourth, {})
    killed = subprocess.Popen(
        rollout_command(fleet, inventory, "--driver-version", NEW), cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    kill_while_running(fleet, fifth, killed, "dkms")
    wait_for_package_transaction(fleet, fifth)
    status = subprocess.run(
        rollout_command(fleet, inventory, "--status"),
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert re.search(rf"^  {re.escape(names[4])} upgrading since ", status.stdout, re.MULTILINE), (
        status.stdout
    )
    run = rollout(fleet, inventory)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"done (6): {', '.join(names)}" in run.stdout
    assert [running_driver(fleet, host) for host in gpu_hosts] == [NEW] * 6
    # Every host changed to the new driver exactly once.
    assert [len(driver_changes(fleet, host)) for host in gpu_hosts] == [1] * 6
    for host in gpu_hosts[:5]:
        assert node_info(fleet, cluster, host).state == "IDLE"
    assert node_info(fleet, cluster, sixth).reason == HAND_REASON
