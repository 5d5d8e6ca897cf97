"""
Rolling driver changes end to end on booted test hosts: batches, refusal of busy hosts and
drain, a failed verification that stops the rollout, an interrupted rollout finished by the next
run, a downgrade, and a branch change. Test hosts reboot for real (nspawn restarts them), which
is how the new kernel module "loads": the stand-in's loaded module lives in /run.
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
    kill_while_running,
    repo_data,
    run_deploy,
    wait_for_package_transaction,
)
from testbed.standin_gpus import TESLA_V100, present_gpus, standin_config
from tests.e2e.test_gpu_host_deploy import SNAPSHOT, TEST_IMAGE, assert_converged, ssh_ok

pytestmark = pytest.mark.e2e

OLD, NEW = "470.182.03", "470.239.06"
STANDIN_CONFIG = "/etc/nvidia-standin/gpus.json"
# One package of every driver, whatever its packages: the compute library.
HELD_DRIVER = "apt-mark showhold | grep -c '^libnvidia-compute-' || true"
# The rollout's report, a line per group: "done (2): 10.0.0.2, 10.0.0.3".
UNVERIFIED = "upgraded, verification failed"
ROLLOUT_GROUPS = ("done", UNVERIFIED, "failed", "not reached")


def write_inventory(
    fleet: Fleet,
    path: Path,
    repo: RepoTree,
    hosts: list[TestHost] | None = None,
    **data: Any,
) -> Path:
    """An inventory of the fleet's hosts (or of ``hosts``) on the old driver."""
    settings = {
        **repo_data(repo, fleet.os_release),
        "nvidia_driver_version": OLD,
        "gpu_reboot_allowed": True,
        "gpu_smoke_test": False,
        # The verification's container layer runs this image (imported by converged()).
        "tensorflow_image": TEST_IMAGE,
        "gpu_results_dir": str(path.parent / "results"),
        "upgrade_batch_size": 2,
        **data,
    }
    return fleet.write_inventory(path, settings, hosts=hosts)


def rollout_command(fleet: Fleet, inventory: Path, *options: str) -> list[str]:
    return fleet.controller.command(
        [sys.executable, "-m", "gpufleet", "rollout", str(inventory), *options]
    )


def roll_out(fleet: Fleet, inventory: Path, *options: str) -> tuple[dict[str, list[str]], str]:
    """Run the rollout; return its groups (ROLLOUT_GROUPS) and its whole output."""
    process = subprocess.run(
        rollout_command(fleet, inventory, *options),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    groups = {}
    for line in process.stdout.splitlines():
        name, _, hosts = line.partition(": ")
        group = name.rsplit(" (", 1)[0]
        if group in ROLLOUT_GROUPS:
            groups[group] = [] if hosts == "-" else hosts.split(", ")
    assert set(groups) == set(ROLLOUT_GROUPS), process.stdout + process.stderr
    assert process.returncode == (1 if groups["failed"] + groups[UNVERIFIED] else 0)
    return groups, process.stdout + process.stderr


def pin_warning(names: list[str]) -> str:
    """The rollout's warning that the inventory would take ``names`` back to OLD."""
    return (
        f"warning: the inventory still pins nvidia_driver_version = {OLD} for {', '.join(names)}: "
        "the next gpu_host run would downgrade them; update the inventory"
    )


def addresses(hosts: list[TestHost]) -> list[str]:
    return [host.address for host in hosts]


def running_driver(fleet: Fleet, host: TestHost) -> str:
    """The driver nvidia-smi reports: the loaded module matching the installed libraries."""
    command = "nvidia-smi --query-gpu=driver_version --format=csv,noheader"
    return ssh_ok(fleet, host, command).strip()


def installed_driver(fleet: Fleet, host: TestHost) -> str:
    return ssh_ok(fleet, host, "dpkg-query -W -f '${Version}' 'libnvidia-compute-*'").strip()


def container_running(fleet: Fleet, host: TestHost, name: str) -> bool:
    state = ssh_ok(fleet, host, f"docker inspect -f '{{{{.State.Running}}}}' {name}").strip()
    return state == "true"


def converged(
    fleet: Fleet,
    repo: RepoTree,
    cache_dir: Path,
    tmp_path: Path,
    hosts: list[TestHost] | None = None,
) -> Path:
    """Put a V100 on each host's stand-in bus, converge the fleet (or ``hosts``) on the old
    driver, import the test image; return that inventory."""
    hosts = fleet.hosts if hosts is None else hosts
    for host in hosts:
        present_gpus(fleet, host, [TESLA_V100])
    bare = write_inventory(fleet, tmp_path / "bare.py", repo, hosts, gpu_verify=False)
    assert_converged(run_deploy(fleet, bare))
    # python3: the stand-in nvidia-smi the runtime mounts into containers is a Python script.
    tarball = build_image_tarball("debian12", cache_dir, ["python3"])
    for host in hosts:
        import_image(fleet, host, tarball, TEST_IMAGE)
    return write_inventory(fleet, tmp_path / "old.py", repo, hosts)


def start_gpu_job(fleet: Fleet, host: TestHost) -> None:
    """A container given the GPUs, whose process the stand-in nvidia-smi reports; and another."""
    run = f"docker run -d --restart unless-stopped {{}} {TEST_IMAGE} sleep infinity"
    ssh_ok(fleet, host, run.format("--name gpu-job -e NVIDIA_VISIBLE_DEVICES=all"))
    ssh_ok(fleet, host, run.format("--name web -e NVIDIA_VISIBLE_DEVICES=void"))
    pid = int(ssh_ok(fleet, host, "docker inspect -f '{{.State.Pid}}' gpu-job"))
    process = {"gpu": 0, "pid": pid, "process_name": "python3", "used_memory_mib": 300}
    set_standin(fleet, host, {"processes": [process]})


def set_standin(fleet: Fleet, host: TestHost, config: dict[str, Any]) -> None:
    """The stand-ins' processes and forced modes, on the V100 converged() presented."""
    config = {**standin_config([TESLA_V100]), **config}
    ssh_ok(fleet, host, f"mkdir -p /etc/nvidia-standin && echo '{json.dumps(config)}' > "
                        f"{STANDIN_CONFIG}")  # fmt: skip


def test_rolling_upgrade_refuses_busy_hosts_stops_at_a_failed_batch_and_rolls_back(
    fleet_factory: FleetFactory, repo_tree: RepoTree, cache_dir: Path, tmp_path: Path
) -> None:
    fleet = fleet_factory(count=6)
    hosts = fleet.hosts
    names = addresses(hosts)
    old = converged(fleet, repo_tree, cache_dir, tmp_path)
    start_gpu_job(fleet, hosts[1])
    before = {host.name: ssh_ok(fleet, host, SNAPSHOT) for host in hosts}
    # The inventories keep OLD: NEW is the rollout's override.
    to_new = ("--driver-version", NEW)

    dry = subprocess.run(
        rollout_command(fleet, old, *to_new, "--dry"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    listing = dry.stdout + dry.stderr
    assert dry.stdout.startswith(
        f"batch 1/3: {', '.join(names[:2])}\nbatch 2/3: {', '.join(names[2:4])}\n"
    ), listing
    assert f"driver upgrade {OLD} -> {NEW}; GPU users: none; reboot needed" in listing, listing
    assert "GPU users: process " in listing and "(container gpu-job)" in listing
    assert all(ssh_ok(fleet, host, SNAPSHOT) == before[host.name] for host in hosts)

    # Busy host in the first batch: refused, the batch fails, nothing further is touched.
    groups, output = roll_out(fleet, old, *to_new)
    assert groups == {
        "done": names[:1],
        UNVERIFIED: [],
        "failed": names[1:2],
        "not reached": names[2:],
    }
    assert f"batch 1/3: failed ({names[1]})" in output
    assert pin_warning(names[:1]) in output
    assert "refusing to change the driver, the GPUs are in use" in output
    assert "container gpu-job" in output and "container web" not in output
    assert running_driver(fleet, hosts[0]) == NEW
    for host in hosts[1:]:
        assert ssh_ok(fleet, host, SNAPSHOT) == before[host.name]
    assert container_running(fleet, hosts[1], "gpu-job")

    # The same command takes the rollout up: host 0 stays done, the failed host 1 is tried again
    # in the next batch with host 2, then hosts 3 and 4. With drain the GPU container (only it)
    # is stopped; host 3's driver does not come up, so its verification fails and the rollout
    # stops after its batch.
    set_standin(fleet, hosts[3], {"mode": "no-driver"})
    drain = write_inventory(fleet, tmp_path / "drain.py", repo_tree, upgrade_drain=True)
    groups, output = roll_out(fleet, drain, *to_new)
    assert groups == {
        "done": [*names[:3], names[4]],
        UNVERIFIED: names[3:4],
        "failed": [],
        "not reached": names[5:],
    }
    assert f"batch 1/3: {names[1]}, {names[2]}" in output
    assert pin_warning(names[:5]) in output
    assert "Drain: stop the containers using the GPUs (gpu-job)" in output
    assert not container_running(fleet, hosts[1], "gpu-job")
    assert container_running(fleet, hosts[1], "web")
    # Host 3's stand-in driver is down: nvidia-smi cannot answer there.
    assert [running_driver(fleet, hosts[i]) for i in (0, 1, 2, 4)] == [NEW] * 4
    assert ssh_ok(fleet, hosts[5], SNAPSHOT) == before[hosts[5].name]
    # The job is gone: a real nvidia-smi no longer lists its process.
    set_standin(fleet, hosts[1], {})
    set_standin(fleet, hosts[3], {})

    # Killed while dpkg changes host 5's driver: still held there; the next run finishes.
    controller = subprocess.Popen(
        rollout_command(fleet, drain, *to_new), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    kill_while_running(fleet, hosts[5], controller, "dkms")
    wait_for_package_transaction(fleet, hosts[5])
    assert ssh_ok(fleet, hosts[5], HELD_DRIVER).strip() == "1"
    groups, output = roll_out(fleet, drain, *to_new)
    assert groups == {"done": names, UNVERIFIED: [], "failed": [], "not reached": []}
    assert pin_warning(names) in output
    assert [running_driver(fleet, host) for host in hosts] == [NEW] * 6
    assert all(installed_driver(fleet, host).startswith(NEW) for host in hosts)

    # A bad release is rolled back by rolling out the inventory's older pin.
    groups, output = roll_out(fleet, old, "--batch-size", "3")
    assert groups == {"done": names, UNVERIFIED: [], "failed": [], "not reached": []}
    assert f"driver downgrade {NEW} -> {OLD}; GPU users: none" in output
    assert "the inventory still pins" not in output
    assert [running_driver(fleet, host) for host in hosts] == [OLD] * 6
    assert all(ssh_ok(fleet, host, HELD_DRIVER).strip() == "1" for host in hosts)


def test_branch_change_replaces_the_old_family_and_reboot_required_stops(
    fleet_factory: FleetFactory, repo_tree: RepoTree, cache_dir: Path, tmp_path: Path
) -> None:
    fleet = fleet_factory(count=1)
    (host,) = fleet.hosts
    converged(fleet, repo_tree, cache_dir, tmp_path)

    branch_535: dict[str, Any] = {
        "nvidia_driver_branch": "535",
        "nvidia_driver_version": "535.183.01",
    }
    no_reboot = write_inventory(
        fleet, tmp_path / "no_reboot.py", repo_tree, gpu_reboot_allowed=False, **branch_535
    )
    run = run_deploy(fleet, no_reboot, deploy="deploys/driver_upgrade.py")
    assert run.returncode != 0
    assert (
        "REBOOT REQUIRED (kernel module 470.182.03 is loaded, 535.183.01 is pinned)" in run.output
    ), run.output[-5000:]
    holds = ssh_ok(fleet, host, "apt-mark showhold").split()
    assert "libnvidia-compute-535" in holds and not any(h.endswith("-470") for h in holds)

    # The next run (reboot allowed) finishes what the first one could not. Its verification
    # needs no image without upgrade_smoke_test: with the image gone, the container check is
    # left unverified and the upgrade still passes.
    ssh_ok(fleet, host, f"docker image rm {TEST_IMAGE}")
    upgrade = write_inventory(fleet, tmp_path / "upgrade.py", repo_tree, **branch_535)
    assert_converged(run_deploy(fleet, upgrade, deploy="deploys/driver_upgrade.py"))
    assert running_driver(fleet, host) == "535.183.01"
    result = json.loads((tmp_path / "results" / f"{host.address}.json").read_text())
    layers = result["verdict"]["layers"]
    container = next(layer for layer in layers if layer["layer"] == "container")
    assert container["state"] == "unverified"
    assert container["checks"][-1]["evidence"] == (
        f"no container was run: {TEST_IMAGE} is not on the host (needed only for the smoke test)"
    )
    assert [layer["state"] for layer in layers][:3] == ["ok", "ok", "ok"]
    import_image(fleet, host, build_image_tarball("debian12", cache_dir, ["python3"]), TEST_IMAGE)
    packages = ssh_ok(fleet, host, "dpkg-query -W -f '${Package} ${Status}\\n' '*nvidia*'")
    assert not [line for line in packages.splitlines() if "-470 " in line and " installed" in line]
    again = run_deploy(fleet, upgrade)
    assert_converged(again)
    assert again.changed() == {}
