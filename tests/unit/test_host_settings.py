"""
The seed articles' host settings as data keys: the docker group's members (docker_users) and
NCCL's /etc/nccl.conf (nccl_*): the pure rules, the facts from real outputs, the operation in
pyinfra's {args, facts, commands} style.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gpufleet.facts.accounts import DockerGroup, parse_docker_group
from gpufleet.facts.network import NetworkInterfaces
from gpufleet.facts.verify import container_smoke_test_command
from gpufleet.operations.accounts import docker_group_members
from gpufleet.stack.accounts import docker_group_change, missing_users_problem
from gpufleet.stack.nccl import (
    NcclSettings,
    interface_problem,
    render_nccl_conf,
    selected_interfaces,
)
from tests.fakehost import OperationCase, operation_commands
from tests.unit.test_verify import fixture_lines

INTERFACES = ["docker0", "eno1", "eth0", "eth1", "ib0", "lo"]


@pytest.mark.parametrize(
    ("socket_ifname", "selected"),
    [
        # NCCL's own examples (SOURCES.md, "NCCL").
        ("eth", ["eth0", "eth1"]),
        ("=eth0", ["eth0"]),
        ("=eth0,eth1", ["eth0", "eth1"]),
        ("^docker", ["eno1", "eth0", "eth1", "ib0", "lo"]),
        ("^=docker0", ["eno1", "eth0", "eth1", "ib0", "lo"]),
        ("^docker,lo", ["eno1", "eth0", "eth1", "ib0"]),
        ("=eth", []),
        ("bond", []),
    ],
)
def test_socket_ifname_selects_interfaces_as_nccl_does(
    socket_ifname: str, selected: list[str]
) -> None:
    assert selected_interfaces(socket_ifname, INTERFACES) == selected


def test_an_interface_list_that_selects_nothing_is_refused_naming_the_interfaces() -> None:
    assert interface_problem("=eth0", ["eth0", "lo"]) is None
    assert interface_problem(None, []) is None
    assert interface_problem("=ens1f0", ["host0", "lo"]) == (
        "nccl_socket_ifname = '=ens1f0' selects none of the host's network interfaces "
        "(host0, lo); name one of them, e.g. '=host0'"
    )


def test_nccl_conf_has_one_line_per_setting() -> None:
    assert render_nccl_conf(NcclSettings("=eth0", True, "WARN")) == (
        "# Managed by gpufleet (nccl_* inventory keys); NCCL reads it at its start.\n"
        "NCCL_SOCKET_IFNAME==eth0\n"
        "NCCL_IB_DISABLE=1\n"
        "NCCL_DEBUG=WARN\n"
    )
    assert not NcclSettings().wanted
    assert render_nccl_conf(NcclSettings(ib_disable=False)).endswith("\nNCCL_IB_DISABLE=0\n")


def test_the_smoke_test_container_reads_the_hosts_nccl_conf() -> None:
    command = container_smoke_test_command("tf:2.9", 2, nccl_conf=True)
    assert "--volume /etc/nccl.conf:/etc/nccl.conf:ro tf:2.9 python3" in command
    assert "--volume" not in container_smoke_test_command("tf:2.9", 2)


def test_docker_group_changes_only_what_gpufleet_owns() -> None:
    # bob was put in the group by hand, carol by gpufleet; alice is new.
    change = docker_group_change(["alice", "bob"], ["bob", "carol"], ["carol"])
    assert change.add == ["alice"]
    assert change.remove == ["carol"]
    assert change.added_by_gpufleet == ["alice"]
    # bob leaves the list: gpufleet never put him in, so he stays.
    assert docker_group_change([], ["bob"], []).remove == []
    assert missing_users_problem(["alice", "dave"], ["alice"]) == (
        "docker_users names 'dave', which the host has no user of: gpufleet creates no users; "
        "create them first or leave them out of docker_users"
    )


def test_docker_group_fact_from_getent_and_gpufleets_record() -> None:
    info = parse_docker_group(fixture_lines("facts/docker-group-getent.txt"))
    assert info == {
        "members": ["bob", "alice"],
        "existing_users": ["alice", "bob"],
        "added_by_gpufleet": ["alice"],
    }
    assert parse_docker_group([])["members"] is None


def test_docker_group_fact_command_runs_here() -> None:
    # This machine: root exists, nobody-else does not; no docker group need exist.
    output = subprocess.run(
        ["sh", "-c", DockerGroup().command(users=["root", "nosuchuser"])],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert DockerGroup().process(output)["existing_users"] == ["root"]


def test_network_interfaces_from_sysfs_here() -> None:
    output = subprocess.run(
        ["sh", "-c", NetworkInterfaces().command()], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert NetworkInterfaces().process(output) == sorted(
        p.name for p in Path("/sys/class/net").iterdir()
    )
    assert "lo" in NetworkInterfaces().process(output)


RECORD = "/etc/gpufleet/docker-users"
GROUP_CASES: list[OperationCase] = [
    OperationCase(
        id="adds-and-records",
        args={"users": ["alice"]},
        facts={
            "DockerGroup": {
                "members": ["bob"],
                "existing_users": ["alice"],
                "added_by_gpufleet": [],
            },
            "FileDigests": {},
        },
        commands=[
            "gpasswd --add alice docker",
            "mkdir -p /etc/gpufleet",
            f"upload {RECORD}",
            f"chmod 644 {RECORD}",
        ],
        uploads={RECORD: b"alice\n"},
    ),
    OperationCase(
        id="takes-out-only-its-own",
        args={"users": []},
        facts={
            "DockerGroup": {
                "members": ["alice", "bob"],
                "existing_users": [],
                "added_by_gpufleet": ["alice"],
            },
            "FileDigests": {RECORD: "digest of alice"},
        },
        commands=[
            "gpasswd --delete alice docker",
            "mkdir -p /etc/gpufleet",
            f"upload {RECORD}",
            f"chmod 644 {RECORD}",
        ],
        uploads={RECORD: b""},
    ),
    OperationCase(
        id="nothing-wanted-nothing-recorded",
        args={"users": []},
        facts={"DockerGroup": {"members": ["bob"], "existing_users": [], "added_by_gpufleet": []}},
        commands=[],
    ),
    OperationCase(
        id="converged",
        args={"users": ["alice"]},
        facts={
            "DockerGroup": {
                "members": ["alice"],
                "existing_users": ["alice"],
                "added_by_gpufleet": ["alice"],
            },
            # sha256 of "alice\n".
            "FileDigests": {
                RECORD: "f87165e305b0f7c4824d3806434f9d0909610a25641ab8773cf92a48c9d77670"
            },
        },
        commands=[],
    ),
]


@pytest.mark.parametrize("case", GROUP_CASES, ids=[case.id for case in GROUP_CASES])
def test_docker_group_members(case: OperationCase) -> None:
    planned = operation_commands(docker_group_members, case.args, case.facts)
    assert planned.commands == case.commands
    assert planned.uploads == case.uploads
