"""
What a rollout costs beyond the driver change itself (needs root and systemd-nspawn, like the
end-to-end tests). Prints figures; it is not a timed test.

    .venv/bin/python -m bench.rollout_bench [--hosts 3]

N test hosts on driver OLD, Slurm compute nodes of one more host's slurmctld (testbed/slurm.py),
are rolled to NEW with `gpu_scheduler: slurm`, then back to OLD with `gpu_scheduler: none`, one
host per batch. Each rollout's wall time less its batches' upgrade deploys (package change,
reboot, verification: the rollout record's upgrade_seconds) is the rollout's own overhead: for
Slurm, reading the nodes, draining, polling for jobs (none run here) and resuming.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from testbed.fleet import DEFAULT_FLEET_OS, REPO_ROOT, Fleet
from testbed.repos import build_repos
from testbed.rootfs import default_cache_dir
from testbed.runs import repo_data
from testbed.slurm import start_slurm
from testbed.standin_gpus import TESLA_V100, present_gpus

CACHE_DIR = default_cache_dir()
OLD, NEW = "470.182.03", "470.239.06"


def rollout(fleet: Fleet, inventory: Path, version: str) -> tuple[float, float]:
    """Roll ``inventory`` to ``version``: the wall seconds, and those of its upgrade deploys."""
    command = [sys.executable, "-m", "gpufleet", "rollout", str(inventory),
               "--driver-version", version]  # fmt: skip
    started = time.monotonic()
    process = subprocess.run(
        fleet.controller.command(command), cwd=REPO_ROOT, capture_output=True, text=True
    )
    seconds = time.monotonic() - started
    if process.returncode != 0:
        raise RuntimeError(f"rollout failed:\n{process.stdout}{process.stderr}"[-4000:])
    record = json.loads((inventory.parent / ".gpufleet" / f"rollout-{version}.json").read_text())
    upgrades = sum(host["upgrade_seconds"] for host in record["hosts"].values())
    return seconds, upgrades


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/gpufleet-bench/rollout"))
    arguments = parser.parse_args()
    count = arguments.hosts
    arguments.work_dir.mkdir(parents=True, exist_ok=True)
    repo = build_repos(CACHE_DIR / "repos", [DEFAULT_FLEET_OS], rootfs_cache_dir=CACHE_DIR)
    print(f"# {platform.node()}: {os.cpu_count()} cores, {platform.platform()}")
    with Fleet(count + 1, DEFAULT_FLEET_OS, CACHE_DIR, repo=repo) as fleet:
        controller, hosts = fleet.hosts[0], fleet.hosts[1:]
        for host in hosts:
            present_gpus(fleet, host, [TESLA_V100])
        data = {
            **repo_data(repo, DEFAULT_FLEET_OS),
            "nvidia_driver_version": OLD,
            "gpu_reboot_allowed": True,
            "gpu_smoke_test": False,
            "gpu_results_dir": str(arguments.work_dir / "results"),
            "upgrade_batch_size": 1,
        }
        bare = fleet.write_inventory(
            arguments.work_dir / "bare.py", {**data, "gpu_verify": False}, hosts=hosts
        )
        converge = fleet.run_pyinfra(str(bare), "deploys/gpu_host.py")
        if converge.returncode != 0:
            raise RuntimeError(f"converge failed:\n{converge.stderr[-4000:]}")
        start_slurm(fleet, controller, hosts)
        print(
            "| N | scheduler | rollout wall s | upgrade deploys s | overhead s | overhead s/host |"
        )
        print("|---|---|---|---|---|---|")
        for scheduler, version in (("slurm", NEW), ("none", OLD)):
            inventory = fleet.write_inventory(
                arguments.work_dir / f"{scheduler}.py", {**data, "gpu_scheduler": scheduler},
                hosts=hosts,
            )  # fmt: skip
            seconds, upgrades = rollout(fleet, inventory, version)
            overhead = seconds - upgrades
            print(
                f"| {count} | {scheduler} | {seconds:.1f} | {upgrades:.1f} | {overhead:.1f} "
                f"| {overhead / count:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
