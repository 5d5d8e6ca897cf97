"""
deploys/verify.py and deploys/audit.py end to end on a converged test host, with a real docker
container (Debian 12, python3, CPU-only TensorFlow) started with --gpus all through the stand-in
NVIDIA container runtime. The host has no GPU, so the framework layer fails for that honest
reason; the layers below it are checked on the stand-in driver, CUDA and cuDNN.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from testbed.fleet import FleetFactory, TestHost
from testbed.images import build_tensorflow_image_tarball, import_image
from testbed.repos import RepoTree
from testbed.runs import DeployRun, repo_data, run_deploy

pytestmark = pytest.mark.e2e

# A tag that names no TensorFlow release: the planner leaves a custom image to the smoke test.
TENSORFLOW_IMAGE = "gpufleet-test/tensorflow-cpu:bookworm"
VERIFY_OPERATION = "Verify GPU host | Verify the GPU stack, hardware to framework"


def layer_states(result: dict[str, Any]) -> dict[str, str]:
    return {layer["layer"]: layer["state"] for layer in result["verdict"]["layers"]}


def checks(result: dict[str, Any], layer_name: str) -> dict[str, dict[str, Any]]:
    (layer,) = [layer for layer in result["verdict"]["layers"] if layer["layer"] == layer_name]
    return {check["name"]: check for check in layer["checks"]}


def assert_failed_at_verify_without_change(run: DeployRun, host: TestHost) -> None:
    """
    The run failed its only host at verification, with every operation unchanged. pyinfra prints
    no JSON results once no host remains, so this reads its log: an operation that ran a command
    logs "Success", one that changed nothing "No changes".
    """
    assert run.returncode != 0
    assert run.results is None
    assert f"[{host.address}] Error: executed 0 commands" in run.output, run.output[-6000:]
    assert f"[{host.address}] Success" not in run.output
    assert "No hosts remaining!" in run.output


def test_verify_reaches_the_framework_and_reports_why_it_fails(
    fleet_factory: FleetFactory, repo_tree: RepoTree, cache_dir: Path, tmp_path: Path
) -> None:
    fleet = fleet_factory(count=1)
    (host,) = fleet.hosts
    results = tmp_path / "results"
    data = {
        **repo_data(repo_tree, fleet.os_release),
        "tensorflow_image": TENSORFLOW_IMAGE,
        "gpu_results_dir": str(results),
        "gpu_expected_count": 1,
    }
    inventory = fleet.write_inventory(tmp_path / "inventory.py", {**data, "gpu_verify": False})
    converged = run_deploy(fleet, inventory)
    assert converged.returncode == 0, converged.output[-6000:]
    assert not results.exists()
    import_image(fleet, host, build_tensorflow_image_tarball(cache_dir), TENSORFLOW_IMAGE)

    run = run_deploy(fleet, inventory, deploy="deploys/verify.py")
    assert_failed_at_verify_without_change(run, host)
    assert f"Starting operation: gpufleet verification | {VERIFY_OPERATION}" in run.output
    summary = (
        f"{host.address}: BROKEN at framework: this TensorFlow is a CPU-only build — run the smoke "
        f"test in {TENSORFLOW_IMAGE} (seen: TensorFlow 2.15.1, is_built_with_cuda=False)"
    )
    assert summary in run.output

    result = json.loads((results / f"{host.address}.json").read_text())
    assert result["host"] == host.address
    assert result["os"] == "Ubuntu 20.04.6 LTS"
    assert result["verdict"]["summary"] == summary
    # The test host has no pciutils (and no NVIDIA device): the PCI bus could not be read, which
    # is reported, and the layers above are still checked.
    assert layer_states(result) == {
        "hardware": "unverified",
        "driver": "ok",
        "cuda": "ok",
        "container": "ok",
        "framework": "broken",
    }
    assert checks(result, "hardware")["NVIDIA GPUs on the PCI bus"]["evidence"] == (
        "lspci not available (install pciutils)"
    )
    facts = result["facts"]
    assert facts["lspci"] is None
    assert facts["nvidia_smi"]["driver_version"] == "535.183.01"
    (gpu,) = facts["nvidia_smi"]["gpus"]
    assert gpu["name"] == "Tesla T4" and gpu["persistence_mode"] is True
    assert facts["cuda"]["toolkits"]["11.2"]["nvcc_release"] == "11.2"
    assert facts["cudnn_version"] == "8.1.1"
    assert any(re.match(r"\s+libcudnn\.so\.8 \(", line) for line in facts["ldconfig"])
    assert "nvidia" in facts["docker_info"]["runtimes"]
    assert facts["docker_info"]["default_runtime"] == "nvidia"
    container_run = facts["container_gpu_run"]
    assert (
        container_run["command"] == f"docker run --rm --gpus all {TENSORFLOW_IMAGE} nvidia-smi -L"
    )
    assert container_run["exit_status"] == 0
    assert container_run["output"] == f"GPU 0: Tesla T4 (UUID: {gpu['uuid']})"
    assert checks(result, "container")["--gpus all container sees the host's GPUs"]["passed"]

    smoke_run = facts["smoke_test_run"]
    assert smoke_run["command"] == (
        f"docker run --rm -i --gpus all {TENSORFLOW_IMAGE} python3 - --expected-gpus 1"
    )
    assert smoke_run["exit_status"] == 1
    assert result["smoke_test"]["tensorflow_version"] == "2.15.1"
    assert result["smoke_test"]["built_with_cuda"] is False
    assert result["smoke_test"]["gpus"] == []
    assert result["smoke_test"]["error"] == (
        "TensorFlow sees no GPU: this is a CPU-only build (is_built_with_cuda=False); use a GPU "
        "build such as the tensorflow/tensorflow:2.9.0-gpu image (expected 1, saw 0)"
    )

    # gpu_host verifies at its end: a converged host is verified without counting a change.
    rerun = run_deploy(fleet, fleet.write_inventory(tmp_path / "inventory-verify.py", data))
    assert_failed_at_verify_without_change(rerun, host)
    assert f"Starting operation: gpufleet GPU host | {VERIFY_OPERATION}" in rerun.output
    assert summary in rerun.output

    audit = run_deploy(fleet, inventory, deploy="deploys/audit.py")
    assert audit.returncode == 0, audit.output[-6000:]
    assert audit.changed() == {} and audit.failed() == {}
    assert summary in audit.output
    markdown = (results / "fleet-report.md").read_text()
    assert "1 hosts: 0 ok, 1 broken, 0 unverified, 0 unreadable, 0 drifted" in markdown
    (row,) = [line for line in markdown.splitlines() if line.startswith(f"| {host.address} |")]
    # CUDA lists /usr/local/cuda-11 too: the toolkit's alternatives link for the 11.x series.
    assert "| 535.183.01 | 11.2 | 8.1.1 | default nvidia, nvidia registered | 1x Tesla T4 |" in row
    assert row.endswith("| framework |")
    assert f"- {summary}" in markdown
    assert summary in (results / "fleet-report.html").read_text()

    # TensorFlow 2.9 has no wheels for Debian 12's Python 3.11: the host test is refused up front
    # (on a Debian 12 host given a mirror of NVIDIA's ubuntu2004 repository, which has CUDA 11.2).
    debian = fleet_factory(count=1, os_release="debian12")
    debian_inventory = debian.write_inventory(
        tmp_path / "inventory-debian12.py",
        {**data, **repo_data(repo_tree, "ubuntu20.04"), "tensorflow_host_test": True},
    )
    refused = run_deploy(debian, debian_inventory, deploy="deploys/verify.py")
    assert refused.returncode != 0
    assert "refusing to deploy, nothing was changed on the host" in refused.output
    assert "TensorFlow 2.9.0 needs Python 3.7 to 3.10 on the host, which has python3 3.11" in (
        refused.output
    )
