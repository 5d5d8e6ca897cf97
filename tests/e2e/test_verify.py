"""
deploys/verify.py and deploys/audit.py end to end on a converged test host, with a real docker
container (Debian 12, python3, CPU-only TensorFlow) started with --gpus all through the stand-in
NVIDIA container runtime. The host presents a stand-in Tesla T4 on its PCI bus
(testbed/standin_gpus.py) and the TensorFlow in the image is a CPU-only build, so the framework
layer fails for that honest reason; the layers below it are checked on the stand-in driver, CUDA
and cuDNN.
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
from testbed.standin_gpus import TESLA_T4, present_gpus

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
    present_gpus(fleet, host, [TESLA_T4])
    results = tmp_path / "results"
    data = {
        **repo_data(repo_tree, fleet.os_release),
        "tensorflow_image": TENSORFLOW_IMAGE,
        "gpu_results_dir": str(results),
        "gpu_expected_count": 1,
        # /etc/nccl.conf, which the smoke test's container reads through a read-only mount.
        "nccl_debug": "WARN",
    }
    inventory = fleet.write_inventory(tmp_path / "inventory.py", {**data, "gpu_verify": False})
    converged = run_deploy(fleet, inventory)
    assert converged.returncode == 0, converged.output[-6000:]
    # gpu_verify false: no verification result, only the run's summary.
    assert [path.name[:4] for path in results.iterdir()] == ["run-"]
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
    assert layer_states(result) == {
        "hardware": "ok",
        "driver": "ok",
        "cuda": "ok",
        "container": "ok",
        "framework": "broken",
    }
    assert checks(result, "hardware")["NVIDIA GPUs on the PCI bus"]["evidence"] == (
        "1 (expected 1)"
    )
    facts = result["facts"]
    assert facts["pci_devices"] == [
        {"address": "0000:07:00.0", "class_code": "0302", "device_id": "1eb8"}
    ]
    # What the result records beside the verdict.
    assert result["gpufleet_version"] == "0.1.0"
    assert result["container_toolkit_version"] == "1.17.8"
    held = {package["name"] for package in result["pinned_packages"] if package["held"]}
    assert {"libcudnn8", "cuda-toolkit-11-2", "nvidia-container-toolkit"} <= held
    # A custom image's TensorFlow is not in gpufleet's table: its coverage is not graded.
    assert result["framework_coverage"] == []
    assert result["smoke_test_seconds"] > 0
    assert facts["nvidia_smi"]["driver_version"] == "535.183.01"
    (gpu,) = facts["nvidia_smi"]["gpus"]
    assert gpu["name"] == "Tesla T4" and gpu["persistence_mode"] is True
    assert facts["cuda"]["toolkits"]["11.2"]["nvcc_release"] == "11.2"
    assert facts["cudnn_version"] == "8.1.1"
    # The loader cache's dump stays out of the result; the check records the path it used.
    assert "ldconfig" not in facts
    assert re.fullmatch(
        r"/\S+/libcudnn\.so\.8",
        checks(result, "cuda")["ldconfig resolves libcudnn.so.8"]["evidence"],
    )
    assert "nvidia" in facts["docker_info"]["runtimes"]
    assert facts["docker_info"]["default_runtime"] == "nvidia"
    container_run = facts["container_gpu_run"]
    assert (
        container_run["command"]
        == f"docker run --rm --pull never --gpus all {TENSORFLOW_IMAGE} nvidia-smi -L"
    )
    assert container_run["exit_status"] == 0
    assert container_run["output"] == f"GPU 0: Tesla T4 (UUID: {gpu['uuid']})"
    assert checks(result, "container")["--gpus all container sees the host's GPUs"]["passed"]

    smoke_run = facts["smoke_test_run"]
    assert smoke_run["command"] == (
        "docker run --rm --pull never -i --gpus all --volume /etc/nccl.conf:/etc/nccl.conf:ro "
        f"{TENSORFLOW_IMAGE} python3 - --expected-gpus 1"
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
    assert "1 host: 1 broken." in markdown
    (row,) = [line for line in markdown.splitlines() if line.startswith(f"| {host.address} |")]
    assert "| 535.183.01 | 11.2 | 8.1.1 | default nvidia, nvidia registered | 1.17.8 |" in row
    assert "| 1x Tesla T4 |" in row and "| framework |" in row
    # The problem once, with the host it hits and what that host showed.
    problem = f"this TensorFlow is a CPU-only build — fix: run the smoke test in {TENSORFLOW_IMAGE}"
    assert problem in markdown
    assert f"  - {host.address} (seen: TensorFlow 2.15.1, is_built_with_cuda=False)" in markdown
    page = (results / "fleet-report.html").read_text()
    assert "this TensorFlow is a CPU-only build" in page and f"{host.address}.json" in page

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
