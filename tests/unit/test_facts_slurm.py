"""
The rollout's facts: the host's name, skip file and installed driver (its command run by this
machine's shell), and Slurm's node states and jobs as sinfo and squeue print them.
"""

from __future__ import annotations

import socket
import subprocess

import pytest

from gpufleet.facts.slurm import (
    DRIVER_PACKAGE_PATTERN,
    RolloutHost,
    SlurmNodes,
    parse_rollout_host,
    parse_slurm_nodes,
)
from tests.unit.test_verify import fixture_lines


def run_sh(command: str) -> list[str]:
    return subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, check=True
    ).stdout.splitlines()


def test_rollout_host_reads_the_short_hostname_and_no_driver_here() -> None:
    # This machine has no NVIDIA driver package and no skip file.
    info = RolloutHost().process(run_sh(RolloutHost().command()))
    assert info == {
        "hostname": socket.gethostname().split(".")[0],
        "skip_file": False,
        "driver_version": None,
    }


def test_rollout_host_reads_an_installed_packages_upstream_version_with_dpkg_query() -> None:
    # The same dpkg-query and sed, asked about a package every Debian host has.
    command = RolloutHost().command().replace(f"'{DRIVER_PACKAGE_PATTERN}'", "dpkg")
    version = subprocess.run(
        ["dpkg-query", "-W", "--showformat=${Version}", "dpkg"], capture_output=True, text=True
    ).stdout
    assert RolloutHost().process(run_sh(command))["driver_version"] == version.split("-")[0]


def test_rollout_host_reads_the_held_driver_of_a_converged_host() -> None:
    assert parse_rollout_host(fixture_lines("facts/rollout-host-held-driver.txt")) == {
        "hostname": "gf14944f0-h1",
        "skip_file": False,
        "driver_version": "470.182.03",
    }
    assert parse_rollout_host(["hostname\tgpu-03", "skip"])["skip_file"] is True


def test_slurm_nodes_from_sinfo_and_squeue() -> None:
    info = parse_slurm_nodes(fixture_lines("facts/slurm-nodes-19.05.5.txt"))
    assert info is not None
    assert info["nodes"] == {
        "gf7322f0-h1": {"state": "mixed", "reason": None},
        "gf7322f0-h2": {"state": "drained", "reason": "disk swap | bay 3"},
    }
    assert info["jobs"] == {
        "gf7322f0-h1": [
            {"job_id": "2", "state": "RUNNING", "user": "root", "name": "gpufleet-test"}
        ],
        "gf7322f0-h2": [],
    }
    assert info["errors"] == []


def test_slurm_nodes_without_slurm_or_without_its_controller() -> None:
    assert parse_slurm_nodes(["no slurm"]) is None
    unreachable = fixture_lines("facts/slurm-nodes-no-controller-19.05.5.txt")
    info = parse_slurm_nodes(unreachable)
    assert info is not None and info["nodes"] == {}
    assert info["errors"][0].startswith("slurm_load_")


def test_slurm_nodes_takes_a_list_of_node_names() -> None:
    with pytest.raises(TypeError, match="nodes must be a list"):
        SlurmNodes().command(nodes="gpu-01")
    command = SlurmNodes().command(nodes=["gpu-01", "gpu-02"])
    assert "--nodes=gpu-01,gpu-02" in command and "for node in gpu-01 gpu-02;" in command
