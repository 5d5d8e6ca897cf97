"""
The seed articles' host settings on a real host: docker_users put in the docker group (and taken
out only if gpufleet put them there), /etc/nccl.conf from the nccl_* keys, and refusals of a
user the host lacks and an interface list that selects none of its interfaces.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.fleet import FleetFactory
from testbed.repos import RepoTree
from testbed.runs import run_deploy
from tests.e2e.test_gpu_host_deploy import SNAPSHOT, assert_converged, inventory, ssh_ok

pytestmark = pytest.mark.e2e


def test_docker_users_and_nccl_conf(
    fleet_factory: FleetFactory, repo_tree: RepoTree, tmp_path: Path
) -> None:
    fleet = fleet_factory(count=1)
    (host,) = fleet.hosts
    ssh_ok(fleet, host, "useradd --create-home alice && useradd --create-home bob")
    interfaces = ssh_ok(fleet, host, "ls /sys/class/net").split()
    nic = next(name for name in interfaces if name != "lo")

    # A user the host lacks and an interface it lacks: refused, nothing changed.
    before = ssh_ok(fleet, host, SNAPSHOT)
    bad = {"docker_users": ["alice", "carol"], "nccl_socket_ifname": "=ib0"}
    refused = run_deploy(fleet, inventory(fleet, tmp_path, repo_tree, bad))
    assert refused.returncode != 0
    assert (
        "docker_users names 'carol', which the host has no user of: gpufleet creates no users"
        in refused.output
    )
    assert (
        f"nccl_socket_ifname = '=ib0' selects none of the host's network interfaces "
        f"({', '.join(sorted(interfaces))}); name one of them, e.g. '={nic}'" in refused.output
    )
    assert ssh_ok(fleet, host, SNAPSHOT) == before

    settings = {"docker_users": ["alice"], "nccl_socket_ifname": f"={nic}", "nccl_debug": "WARN"}
    path = inventory(fleet, tmp_path, repo_tree, settings)
    assert_converged(run_deploy(fleet, path))
    assert "docker" in ssh_ok(fleet, host, "id -nG alice").split()
    assert ssh_ok(fleet, host, "cat /etc/nccl.conf") == (
        "# Managed by gpufleet (nccl_* inventory keys); NCCL reads it at its start.\n"
        f"NCCL_SOCKET_IFNAME=={nic}\n"
        "NCCL_DEBUG=WARN\n"
    )
    assert ssh_ok(fleet, host, "cat /etc/gpufleet/docker-users") == "alice\n"
    # alice can use docker without root: the socket is the docker group's.
    assert ssh_ok(fleet, host, "su alice -c 'docker info --format {{.ServerVersion}}'").strip()
    again = run_deploy(fleet, path)
    assert_converged(again)
    assert again.changed() == {}

    # bob is put in the group by hand; alice leaves the list: only she is taken out.
    ssh_ok(fleet, host, "gpasswd --add bob docker")
    path = inventory(fleet, tmp_path, repo_tree, {**settings, "docker_users": []})
    assert_converged(run_deploy(fleet, path))
    members = ssh_ok(fleet, host, "getent group docker").strip().split(":")[3].split(",")
    assert members == ["bob"]
    assert ssh_ok(fleet, host, "cat /etc/gpufleet/docker-users") == ""
    assert run_deploy(fleet, path).changed() == {}
