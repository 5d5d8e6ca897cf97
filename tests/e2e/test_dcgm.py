"""
DCGM on a real host with stand-ins at NVIDIA's boundary (the CUDA repository's DCGM packages,
nv-hostengine, dcgmi, two V100s): pinned and held for the driver branch, nv-hostengine running
under nvidia-dcgm.service, and `dcgmi diag` in the verification's result and its verdict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from testbed.fleet import Fleet, FleetFactory, TestHost
from testbed.repos import RepoTree
from testbed.runs import repo_data, run_deploy
from testbed.standin_gpus import TESLA_V100, present_gpus
from tests.e2e.test_gpu_host_deploy import SNAPSHOT, assert_converged, ssh_ok

pytestmark = pytest.mark.e2e

DCGM_PACKAGES = "dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n' 'datacenter-gpu*'"


def verify(fleet: Fleet, host: TestHost, inventory: Path, results: Path) -> dict[str, Any]:
    """Run the verification deploy; the host's result file."""
    run_deploy(fleet, inventory, deploy="deploys/verify.py")
    result: dict[str, Any] = json.loads((results / f"{host.address}.json").read_text())
    return result


def dcgm_check(result: dict[str, Any]) -> dict[str, Any]:
    (hardware,) = [layer for layer in result["verdict"]["layers"] if layer["layer"] == "hardware"]
    (check,) = [check for check in hardware["checks"] if check["name"].startswith("DCGM")]
    return check


def test_dcgm_pinned_running_and_diagnosing(
    fleet_factory: FleetFactory, repo_tree: RepoTree, tmp_path: Path
) -> None:
    fleet = fleet_factory(count=1)
    (host,) = fleet.hosts
    present_gpus(fleet, host, [TESLA_V100] * 2)
    results = tmp_path / "results"
    data = {
        **repo_data(repo_tree, fleet.os_release),
        "nvidia_driver_branch": "535",
        "gpu_verify": False,
        "gpu_smoke_test": False,
        "gpu_results_dir": str(results),
        "gpu_dcgm": True,
    }

    # A level gpufleet does not run: refused before anything changes.
    before = ssh_ok(fleet, host, SNAPSHOT)
    wrong = fleet.write_inventory(tmp_path / "wrong.py", {**data, "gpu_dcgm_diag_level": 4})
    refused = run_deploy(fleet, wrong)
    assert refused.returncode != 0
    assert "gpu_dcgm_diag_level = 4 is not a level gpufleet runs; use 1 (software; seconds)" in (
        refused.output
    )
    assert ssh_ok(fleet, host, SNAPSHOT) == before

    inventory = fleet.write_inventory(tmp_path / "dcgm.py", {**data, "gpu_dcgm_diag_level": 2})
    assert_converged(run_deploy(fleet, inventory))
    # dpkg also lists DCGM 3's package, which it knows of (4's core conflicts with it), as "un".
    listed = ssh_ok(fleet, host, DCGM_PACKAGES).splitlines()
    assert [line.rstrip() for line in listed if not line.endswith("un ")] == [
        "datacenter-gpu-manager-4-core 1:4.5.3-1 hi",
        "datacenter-gpu-manager-4-cuda12 1:4.5.3-1 hi",
    ]
    assert ssh_ok(fleet, host, "systemctl is-active nvidia-dcgm") == "active\n"
    assert ssh_ok(fleet, host, "systemctl is-enabled nvidia-dcgm") == "enabled\n"
    assert "2 GPUs found." in ssh_ok(fleet, host, "dcgmi discovery -l")
    again = run_deploy(fleet, inventory)
    assert_converged(again)
    assert again.changed() == {}

    # Level 2: software, PCIe and memory on both GPUs, with the PCIe figures in the result.
    result = verify(fleet, host, inventory, results)
    diag = result["facts"]["dcgm_diag"]
    assert (diag["level"], diag["dcgm_version"], diag["hostengine_reachable"]) == (2, "4.5.3", True)
    assert [gpu["gpu"] for gpu in diag["gpus"]] == [0, 1]
    for gpu in diag["gpus"]:
        assert {name: test["status"] for name, test in gpu["tests"].items()} == {
            "software": "pass",
            "pcie": "pass",
            "memory": "pass",
        }
        assert gpu["tests"]["pcie"]["figures"]["host_to_gpu_gb_s"] > 0
    check = dcgm_check(result)
    assert (check["passed"], check["evidence"]) == (True, "GPU 0: pass; GPU 1: pass")

    # nv-hostengine stopped: dcgmi still diagnoses in an engine of its own, and the verdict says
    # the service is down.
    ssh_ok(fleet, host, "systemctl stop nvidia-dcgm")
    check = dcgm_check(verify(fleet, host, inventory, results))
    assert check["passed"] is False
    assert "nv-hostengine is not running (nvidia-dcgm.service)" in check["problem"]
    # The next run starts it again.
    assert_converged(run_deploy(fleet, inventory))
    assert ssh_ok(fleet, host, "systemctl is-active nvidia-dcgm") == "active\n"
