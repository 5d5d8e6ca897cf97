"""
Docker's daemon.json on a booted host: the running daemon is compared with the file (a run killed
between the write and the restart is repaired), settings merge where docker nests them and only
gpufleet's own keys are taken back, a file docker cannot start with is rolled back, and running
containers are not stopped without leave.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from testbed.fleet import Fleet, FleetFactory, TestHost
from testbed.images import build_image_tarball, import_image
from testbed.repos import RepoTree
from testbed.runs import DeployRun, repo_data, run_deploy
from tests.e2e.test_gpu_host_deploy import (
    TEST_IMAGE,
    assert_converged,
    inventory,
    ssh_ok,
)

pytestmark = pytest.mark.e2e

NVIDIA_RUNTIME = {"path": "nvidia-container-runtime", "args": []}
CRUN = {"path": "/usr/bin/crun"}


def daemon_json(fleet: Fleet, host: TestHost) -> dict[str, Any]:
    return json.loads(ssh_ok(fleet, host, "cat /etc/docker/daemon.json"))


def running_daemon(fleet: Fleet, host: TestHost) -> tuple[str, list[str]]:
    """The running dockerd's default runtime and runtime names."""
    info = json.loads(ssh_ok(fleet, host, "docker info --format '{{json .}}'"))
    return info["DefaultRuntime"], sorted(info["Runtimes"])


def deploy(fleet: Fleet, tmp_path: Path, repo: RepoTree, data: dict[str, Any]) -> DeployRun:
    # A mirror of NVIDIA's ubuntu2004 repository: the one with CUDA 11.2, for any host.
    mirror = repo_data(repo, "ubuntu20.04")
    return run_deploy(fleet, inventory(fleet, tmp_path, repo, {**mirror, **data}))


def test_docker_runs_with_its_daemon_json_and_running_jobs_are_kept(
    fleet_factory: FleetFactory, repo_tree: RepoTree, cache_dir: Path, tmp_path: Path
) -> None:
    # Debian 12's dockerd 20.10 has no --validate: a daemon.json it cannot start with is only
    # found by the restart, which must then restore the file before it.
    fleet = fleet_factory(count=1, os_release="debian12")
    (host,) = fleet.hosts
    ssh_ok(fleet, host, "mkdir -p /etc/docker && echo '{\"log-opts\": {\"max-file\": \"3\"}}' "
                        "> /etc/docker/daemon.json")  # fmt: skip
    first = {"docker_daemon_config": {"default-shm-size": "1G", "log-opts": {"max-size": "10m"}}}
    assert_converged(deploy(fleet, tmp_path, repo_tree, first))
    assert daemon_json(fleet, host) == {
        "log-opts": {"max-file": "3", "max-size": "10m"},
        "runtimes": {"nvidia": NVIDIA_RUNTIME},
        "default-runtime": "nvidia",
        "default-shm-size": "1G",
    }

    # A run killed after writing daemon.json and before restarting docker: the daemon runs
    # without the nvidia runtime while the file has it.
    ssh_ok(fleet, host, "cp /etc/docker/daemon.json /root/gpufleet.json && "
                        "echo '{}' > /etc/docker/daemon.json && systemctl restart docker && "
                        "cp /root/gpufleet.json /etc/docker/daemon.json")  # fmt: skip
    assert running_daemon(fleet, host)[0] == "runc"
    repaired = deploy(fleet, tmp_path, repo_tree, first)
    assert_converged(repaired)
    assert repaired.changed()[host.address] == [
        "gpufleet GPU host | Docker with the nvidia runtime | docker runs with its daemon.json"
    ]
    default_runtime, runtimes = running_daemon(fleet, host)
    assert default_runtime == "nvidia" and "nvidia" in runtimes
    assert deploy(fleet, tmp_path, repo_tree, first).changed() == {}

    # Nested settings merge; the keys gpufleet set before and no longer sets leave the file,
    # the user's max-file stays.
    second = {"docker_daemon_config": {"runtimes": {"crun": CRUN}}}
    assert_converged(deploy(fleet, tmp_path, repo_tree, second))
    assert daemon_json(fleet, host) == {
        "log-opts": {"max-file": "3"},
        "runtimes": {"nvidia": NVIDIA_RUNTIME, "crun": CRUN},
        "default-runtime": "nvidia",
    }
    assert {"crun", "nvidia"} <= set(running_daemon(fleet, host)[1])

    # A daemon.json docker cannot start with: the file before it is back and docker runs.
    broken = {"docker_daemon_config": {"runtimes": {"crun": CRUN}, "max-concurrent-downloads": "3"}}
    failed = deploy(fleet, tmp_path, repo_tree, broken)
    assert failed.returncode != 0
    assert "docker did not start" in failed.output, failed.output[-6000:]
    assert "the previous daemon.json was restored and docker runs with it" in failed.output
    assert daemon_json(fleet, host)["runtimes"] == {"nvidia": NVIDIA_RUNTIME, "crun": CRUN}
    assert "max-concurrent-downloads" not in daemon_json(fleet, host)
    assert ssh_ok(fleet, host, "systemctl is-active docker").strip() == "active"

    # A training job runs: a change that needs a restart is refused, the job keeps running.
    import_image(fleet, host, build_image_tarball("debian12", cache_dir, []), TEST_IMAGE)
    ssh_ok(fleet, host, f"docker run -d --name training-job {TEST_IMAGE} sleep 600")
    before = ssh_ok(fleet, host, "sha256sum /etc/docker/daemon.json")
    third = {"docker_daemon_config": {"runtimes": {"crun": CRUN}, "default-shm-size": "2G"}}
    refused = deploy(fleet, tmp_path, repo_tree, third)
    assert refused.returncode != 0
    assert "which would stop the 1 running container(s): training-job" in refused.output
    assert ssh_ok(fleet, host, "sha256sum /etc/docker/daemon.json") == before
    running = "docker inspect -f '{{.State.Running}}' training-job"
    assert ssh_ok(fleet, host, running).strip() == "true"

    allowed = {**third, "docker_restart_with_running_containers": True}
    assert_converged(deploy(fleet, tmp_path, repo_tree, allowed))
    assert daemon_json(fleet, host)["default-shm-size"] == "2G"
