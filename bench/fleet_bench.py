"""
Wall times of gpufleet's runs on fleets of test hosts (needs root and systemd-nspawn, like the
end-to-end tests). Prints figures; it is not a timed test.

    /tmp/venv/bin/python -m bench.fleet_bench [--sizes 1 4 8 16]

Per fleet size N: (a) a first converge from bare, (b) a no-op re-run of deploys/gpu_host.py,
(c) a rolling driver upgrade in batches of 4 (reboots and verification up to the container
layer included; (a) and (b) run with gpu_verify false, as the test image is imported after (a)),
the commands pyinfra sent per
host in each (its --debug "Running command" lines), and one plain `ssh host true` as the floor.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from testbed.fleet import REPO_ROOT, Fleet
from testbed.images import build_image_tarball, import_image
from testbed.runs import repo_data
from testbed.standin_repo import build_repos
from tests.e2e.test_gpu_host_deploy import TEST_IMAGE

CACHE_DIR = Path(os.environ.get("GPUFLEET_TEST_CACHE", "/var/cache/gpufleet-test"))
UPGRADE_TARGET = "470.239.06"
UPGRADE_BATCH = 4
RUN_COMMAND = re.compile(r"Running command on (\S+):")


@dataclass(frozen=True)
class Timed:
    seconds: float
    commands_per_host: float


def timed(command: list[str], hosts: int) -> Timed:
    started = time.monotonic()
    process = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{process.stderr[-4000:]}")
    commands = len(RUN_COMMAND.findall(process.stdout + process.stderr))
    return Timed(seconds, commands / hosts)


def bench_fleet(count: int, work_dir: Path) -> dict[str, Timed]:
    repo = build_repos(CACHE_DIR / "repos", suites=["bookworm"])
    with Fleet(count, "bookworm", CACHE_DIR, repo=repo) as fleet:
        data = {
            **repo_data(repo),
            "gpu_verify": False,
            "gpu_smoke_test": False,
            "gpu_reboot_allowed": True,
            "gpu_results_dir": str(work_dir / "results"),
        }
        inventory = fleet.write_inventory(work_dir / f"bench_{count}.py", data)
        upgrade = fleet.write_inventory(
            work_dir / f"bench_{count}_upgrade.py",
            {**data, "nvidia_driver_version": UPGRADE_TARGET, "tensorflow_image": TEST_IMAGE},
        )
        pyinfra = [str(Path(sys.executable).with_name("pyinfra")), "-y", "--debug"]
        gpu_host = fleet.controller.command([*pyinfra, str(inventory), "deploys/gpu_host.py"])
        rollout = fleet.controller.command(
            [sys.executable, "-m", "gpufleet", "rollout", str(upgrade),
             "--batch-size", str(UPGRADE_BATCH), "--", "--debug"]
        )  # fmt: skip
        ssh = fleet.ssh_command(fleet.hosts[0], "true")
        figures = {"converge": timed(gpu_host, count), "no-op": timed(gpu_host, count)}
        tarball = build_image_tarball("bookworm", CACHE_DIR, ["python3"])
        for host in fleet.hosts:
            import_image(fleet, host, tarball, TEST_IMAGE)
        figures["upgrade"] = timed(rollout, count)
        figures["ssh true"] = timed(ssh, 1)
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/gpufleet-bench"))
    arguments = parser.parse_args()
    arguments.work_dir.mkdir(parents=True, exist_ok=True)
    print(f"# {platform.node()}: {os.cpu_count()} cores, {platform.platform()}")
    runs = "converge s | cmds/host | no-op s | cmds/host | upgrade s | cmds/host"
    print(f"| N | {runs} | ssh true s |")
    print("|---|---|---|---|---|---|---|---|")
    for count in arguments.sizes:
        figures = bench_fleet(count, arguments.work_dir)
        cells = [
            f"{figures[run].seconds:.1f} | {figures[run].commands_per_host:.0f}"
            for run in ("converge", "no-op", "upgrade")
        ]
        print(f"| {count} | {' | '.join(cells)} | {figures['ssh true'].seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
