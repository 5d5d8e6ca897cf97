"""
deploys/gpu_host.py end to end on booted test hosts: converge from bare, change nothing the
second time, keep what the user had, refuse bad input without touching the host, finish an
interrupted run, and report a broken host in a fleet by name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from testbed.fleet import REPO_ROOT, Fleet, FleetFactory, TestHost
from testbed.images import build_image_tarball, import_image
from testbed.repos import RepoTree
from testbed.runs import (
    DeployRun,
    kill_while_running,
    repo_data,
    run_deploy,
    wait_for_package_transaction,
)
from testbed.standin_repo import REPO_HOST

pytestmark = pytest.mark.e2e

TEST_IMAGE = "gpufleet-test/debian:bookworm"
USER_DAEMON_CONFIG: dict[str, Any] = {
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m", "max-file": "3"},
    "registry-mirrors": ["https://registry-mirror.internal.invalid"],
    "runtimes": {"runc-debug": {"path": "/usr/bin/runc", "runtimeArgs": ["--debug"]}},
}
# What a host's state is compared on: every package, every hold, every file under /etc.
SNAPSHOT = (
    "dpkg-query -W -f '${Package} ${Version} ${Status}\\n'; echo '-- holds'; apt-mark showhold; "
    "echo '-- etc'; find /etc -xdev -type f ! -name ld.so.cache -print0 | sort -z "
    "| xargs -0 sha256sum; echo '-- links'; find /etc /usr/local -xdev -type l -printf '%p %l\\n'"
    " | sort"
)
# What a no-op re-run may send a converged host: its one read (facts/snapshot.py), with one to
# spare for pyinfra's own housekeeping. Before the snapshot, every check was a round trip (18).
NO_OP_RUN_MAX_COMMANDS = 2


def inventory(
    fleet: Fleet,
    tmp_path: Path,
    repo: RepoTree,
    data: dict[str, Any] | None = None,
    host_data: dict[str, dict[str, Any]] | None = None,
) -> Path:
    # These tests are about the install path; tests/e2e/test_verify.py is about verification
    # (which needs a TensorFlow image the hosts cannot pull).
    defaults = {**repo_data(repo, fleet.os_release), "gpu_verify": False}
    return fleet.write_inventory(
        tmp_path / f"inventory_{fleet.prefix}.py", {**defaults, **(data or {})}, host_data
    )


def ssh_ok(fleet: Fleet, host: TestHost, command: str) -> str:
    result = fleet.ssh(host, command)
    assert result.returncode == 0, f"{command}: {result.stderr}"
    return result.stdout


def docker_started(fleet: Fleet, host: TestHost) -> str:
    return ssh_ok(
        fleet, host, "systemctl show docker -p MainPID -p ActiveEnterTimestampMonotonic"
    ).strip()


def assert_converged(run: DeployRun) -> None:
    assert run.returncode == 0, run.output[-6000:]
    assert run.failed() == {}


def run_spec_suite(fleet: Fleet, host: TestHost, data: dict[str, Any], tmp_path: Path) -> None:
    """The testinfra specification suite, from the controller namespace, against ``host``."""
    data_file = tmp_path / "gpufleet-data.json"
    data_file.write_text(json.dumps(data))
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(
        f"Host {host.address}\n  User root\n  IdentityFile {fleet.ssh_key}\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
    )
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/testinfra",
        f"--hosts=ssh://{host.address}", f"--ssh-config={ssh_config}",
        f"--gpufleet-data={data_file}", f"--container-image={TEST_IMAGE}",
    ]  # fmt: skip
    result = subprocess.run(
        fleet.controller.command(command), cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_bare_host_converges_then_changes_nothing(
    fleet_factory: FleetFactory, repo_tree: RepoTree, cache_dir: Path, tmp_path: Path
) -> None:
    fleet = fleet_factory(count=1)
    (host,) = fleet.hosts
    data = {
        **repo_data(repo_tree, fleet.os_release),
        "docker_daemon_config": {"default-shm-size": "1G"},
    }
    path = inventory(fleet, tmp_path, repo_tree, data)
    assert "docker.io" not in ssh_ok(fleet, host, "dpkg-query -W -f '${Package}\\n'").split()

    first = run_deploy(fleet, path)
    assert_converged(first)
    assert "NVIDIA driver 535.183.01 (pinned, held)" in " ".join(first.changed()[host.address])
    started = docker_started(fleet, host)

    second = run_deploy(fleet, path, "--debug")
    assert_converged(second)
    assert second.results is not None, second.output[-4000:]
    assert second.changed() == {}, second.changed()
    sent = second.commands_sent()
    assert 0 < sent[host.address] <= NO_OP_RUN_MAX_COMMANDS, sent
    assert docker_started(fleet, host) == started
    # A dry run of the converged host shows no change, conditional ones included.
    dry = run_deploy(fleet, path, "--dry")
    assert dry.returncode == 0, dry.output[-4000:]
    plan = json.loads(dry.process.stdout)["plan"]
    assert [op["name"] for op in plan if op["hosts_with_change"]] == []
    assert [op["name"] for op in plan if op["hosts_with_conditional_change"]] == []
    assert f"{host.address}  PLANNED" in dry.output

    import_image(fleet, host, build_image_tarball("debian12", cache_dir, []), TEST_IMAGE)
    run_spec_suite(fleet, host, data, tmp_path)


def test_users_docker_daemon_json_and_holds_are_kept(
    fleet_factory: FleetFactory, repo_tree: RepoTree, tmp_path: Path
) -> None:
    # Ubuntu 20.04 with docker already installed and configured by its user.
    fleet = fleet_factory(count=1, os_release="ubuntu20.04")
    (host,) = fleet.hosts
    ssh_ok(fleet, host, "apt-get update -q && DEBIAN_FRONTEND=noninteractive "
                        "apt-get install -y -q --no-install-recommends docker.io")  # fmt: skip
    ssh_ok(
        fleet, host, f"cat > /etc/docker/daemon.json <<'EOF'\n{json.dumps(USER_DAEMON_CONFIG)}\nEOF"
    )
    ssh_ok(fleet, host, "apt-mark hold procps && systemctl restart docker")
    path = inventory(fleet, tmp_path, repo_tree)

    assert_converged(run_deploy(fleet, path))
    config = json.loads(ssh_ok(fleet, host, "cat /etc/docker/daemon.json"))
    assert config == {
        **USER_DAEMON_CONFIG,
        "runtimes": {
            **USER_DAEMON_CONFIG["runtimes"],
            "nvidia": {"path": "nvidia-container-runtime", "args": []},
        },
        "default-runtime": "nvidia",
    }
    backup = json.loads(ssh_ok(fleet, host, "cat /etc/docker/daemon.json.before-gpufleet"))
    assert backup == USER_DAEMON_CONFIG
    assert "procps" in ssh_ok(fleet, host, "apt-mark showhold").split()
    runtimes = json.loads(ssh_ok(fleet, host, "docker info --format '{{json .Runtimes}}'"))
    assert {"nvidia", "runc-debug"} <= set(runtimes)

    started = docker_started(fleet, host)
    second = run_deploy(fleet, path)
    assert_converged(second)
    assert second.changed() == {}
    assert docker_started(fleet, host) == started


BROKEN_DAEMON_JSON = '{"log-driver": "json-file",, }'


@pytest.mark.parametrize(
    ("os_release", "host_setup", "data", "message"),
    [
        # ubuntu2004 carries R450; the driver is too old for the toolkit.
        ("ubuntu20.04", None, {"nvidia_driver_branch": "450", "nvidia_driver_version": "450.51"},
         "nvidia_driver_version = '450.51' is too old for CUDA 11.2.2"),
        ("debian12", None, {"cuda_version": "11.9"},
         "cuda_version = '11.9' is not a CUDA release gpufleet knows"),
        ("debian12", None, {"cuda_version": "12.2", "cuda_package_version": "12.2.2",
                            "nvidia_driver_branch": "535", "nvidia_driver_version": "535.183.01",
                            "tensorflow_image": "example/custom:1"},
         "cudnn_version = '8.1.1.33': cuDNN 8.1 was built for CUDA 10.2, 11.2"),
        ("debian12", None, {"nvidia_cuda_repo_url": None},
         "CUDA 11.2.2 comes from NVIDIA's runfile here: set cuda_runfile_sha256"),
        # A daemon.json that does not parse is the user's to fix; gpufleet leaves it as it is.
        ("debian12",
         f"mkdir -p /etc/docker && printf '%s\\n' '{BROKEN_DAEMON_JSON}' > /etc/docker/daemon.json",
         {}, "/etc/docker/daemon.json cannot be read as dockerd reads it (line 1 column 28"),
        # Debian 12's dockerd 20.10 refuses a byte order mark that Python's json would skip.
        ("debian12",
         "mkdir -p /etc/docker && printf '\\357\\273\\277{}\\n' > /etc/docker/daemon.json",
         {}, "(it starts with a UTF-8 byte order mark, which dockerd before 23.0 cannot read"),
        ("debian12", None, {"docker_daemon_config": {"runtimes": "oops"}},
         "would make a daemon.json that dockerd cannot read: \"runtimes\" must be an object"),
    ],
    ids=["old-driver", "unknown-cuda", "cudnn-for-other-cuda", "debian12-no-mirror",
         "daemon-json-does-not-parse", "daemon-json-byte-order-mark", "runtimes-not-an-object"],
)  # fmt: skip
def test_refused_input_leaves_the_host_byte_for_byte_unchanged(
    fleet_factory: FleetFactory,
    repo_tree: RepoTree,
    tmp_path: Path,
    os_release: str,
    host_setup: str | None,
    data: dict[str, Any],
    message: str,
) -> None:
    fleet = fleet_factory(count=1, os_release=os_release)
    (host,) = fleet.hosts
    if host_setup:
        ssh_ok(fleet, host, host_setup)
    before = ssh_ok(fleet, host, SNAPSHOT)
    run = run_deploy(fleet, inventory(fleet, tmp_path, repo_tree, data))
    assert run.returncode != 0
    assert "refusing to deploy, nothing was changed on the host" in run.output
    assert message in run.output
    assert ssh_ok(fleet, host, SNAPSHOT) == before


def test_interrupted_run_is_finished_by_the_next(
    fleet_factory: FleetFactory, repo_tree: RepoTree, tmp_path: Path
) -> None:
    fleet = fleet_factory(count=1)
    (host,) = fleet.hosts
    path = inventory(fleet, tmp_path, repo_tree)
    command = fleet.controller.command([str(Path(sys.executable).parent / "pyinfra"), "-y",
                                        str(path), "deploys/gpu_host.py"])  # fmt: skip
    controller = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    # Killed while dpkg configures the driver (dkms builds its module): the package transaction
    # runs on to its end on the host, and leaves the driver installed and held.
    kill_while_running(fleet, host, controller, "dkms")
    wait_for_package_transaction(fleet, host)
    assert ssh_ok(fleet, host, "apt-mark showhold | grep -c '^nvidia-dkms-535$'").strip() == "1"

    assert_converged(run_deploy(fleet, path))
    again = run_deploy(fleet, path)
    assert_converged(again)
    assert again.changed() == {}


def test_fleet_of_eight_converges_around_one_broken_host(
    fleet_factory: FleetFactory, repo_tree: RepoTree, tmp_path: Path
) -> None:
    fleet = fleet_factory(count=8)
    broken = fleet.hosts[3]
    # Its CUDA mirror is a port nothing listens on: apt cannot reach the repository.
    unreachable = {"nvidia_cuda_repo_url": f"http://{REPO_HOST}:8099/cuda/repos/ubuntu2004/x86_64/"}
    results = tmp_path / "results"
    path = inventory(
        fleet,
        tmp_path,
        repo_tree,
        {"gpu_results_dir": str(results)},
        host_data={broken.name: unreachable},
    )

    run = run_deploy(fleet, path)
    assert run.returncode != 0
    assert run.results is not None, run.output[-4000:]
    assert run.results["failed_hosts"] == [broken.address]
    healthy = [host for host in fleet.hosts if host.name != broken.name]
    # The run ends with one line per host; the broken one's cause is apt's warning about the
    # mirror it could not reach, not the package it then could not find.
    summary = run.output.split("--> gpufleet summary\n", 1)[1].splitlines()
    lines = {line.split()[0]: line.split(None, 2)[1:] for line in summary if line[:1].isdigit()}
    assert {host.address: lines[host.address][0] for host in healthy} == dict.fromkeys(
        [host.address for host in healthy], "CHANGED"
    )
    outcome, cause = lines[broken.address]
    assert outcome == "FAILED"
    assert cause.startswith("W: Failed to fetch http://") and ":8099/cuda/repos/" in cause, cause
    [written] = results.glob("run-*.json")
    document = json.loads(written.read_text())
    outcomes = {entry["host"]: entry["outcome"] for entry in document["hosts"]}
    assert outcomes[broken.address] == "FAILED" and len(outcomes) == 8
    for host in healthy:
        versions = ssh_ok(
            fleet, host, "nvidia-smi --query-gpu=driver_version --format=csv,noheader"
        )
        assert versions.strip() == "535.183.01"
    limits = [option for host in healthy for option in ("--limit", host.address)]
    again = run_deploy(fleet, path, *limits)
    assert again.results is not None and again.results["totals"]["hosts"] > 0
    assert_converged(again)
    assert again.changed() == {}


def test_a_restart_an_interrupted_run_missed_is_made_by_the_next(
    fleet_factory: FleetFactory, repo_tree: RepoTree, tmp_path: Path
) -> None:
    fleet = fleet_factory(count=1)
    (host,) = fleet.hosts
    path = inventory(fleet, tmp_path, repo_tree)
    assert_converged(run_deploy(fleet, path))
    dropin = "/etc/systemd/system/nvidia-persistenced.service.d/gpufleet.conf"
    # Killed after writing the drop-in, before the restart: the daemon runs as Ubuntu's unit
    # says (--no-persistence-mode) while the drop-in on disk says otherwise.
    ssh_ok(fleet, host, f"mv {dropin} /root/dropin && systemctl daemon-reload && "
                        "systemctl restart nvidia-persistenced && "
                        f"mv /root/dropin {dropin}")  # fmt: skip
    process = (
        "tr '\\0' ' ' < /proc/$(systemctl show -p MainPID --value nvidia-persistenced)/cmdline"
    )
    assert "--no-persistence-mode" in ssh_ok(fleet, host, process).split()

    repaired = run_deploy(fleet, path)
    assert_converged(repaired)
    assert repaired.changed()[host.address] == [
        "gpufleet GPU host | NVIDIA driver | nvidia-persistenced runs in persistence mode"
    ]
    assert "--persistence-mode" in ssh_ok(fleet, host, process).split()
    assert run_deploy(fleet, path).changed() == {}
