"""
What gpufleet's runs cost on fleets of test hosts (needs root and systemd-nspawn, like the
end-to-end tests). Prints figures; it is not a timed test.

    .venv/bin/python -m bench.fleet_bench [--sizes 1 8 32] [--profile bench/profile-noop-32.md]

Per fleet size N: (a) a first converge from bare and (b) a no-op re-run of deploys/gpu_host.py
(both with gpu_verify false), and one plain `ssh host true` as the floor. For each: wall time,
the controller's CPU seconds (user + system of pyinfra, or ssh, and everything it waited for,
from wait4), its peak RSS, and the commands pyinfra sent per host (its --debug "Running command"
lines). `--profile` runs the largest fleet's no-op once more under cProfile and writes the
summary; `--baseline DIR` times the no-op also from another checkout (DIR holds its deploys/ and
gpufleet/), for a before/after figure from the same fleet. `--pin` runs the hosts on the
second core and the controller on the first, so the controller's wall time is its own.
`--artifacts` converges Ubuntu 22.04 hosts instead, whose CUDA comes from NVIDIA's runfile and
cuDNN from its archive (the stand-ins), and prints the artifact bytes the controller fetched for
the fleet and sent to each host.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import pstats
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from testbed.fleet import DEFAULT_FLEET_OS, REPO_ROOT, Fleet
from testbed.repos import build_repos
from testbed.rootfs import default_cache_dir
from testbed.runs import repo_data
from testbed.standin_artifacts import (
    CUDNN_ARCHIVE_NAME,
    RUNFILE_NAME,
    ArtifactServer,
    build_artifacts,
)

CACHE_DIR = default_cache_dir()
# The hosts' OS release: the end-to-end tests' default, whose NVIDIA repository carries CUDA 11.2.
BENCH_OS = DEFAULT_FLEET_OS
RUN_COMMAND = re.compile(r"Running command on (\S+):")
PROFILE_TOP = 25


@dataclass(frozen=True)
class Measured:
    hosts: int
    seconds: float
    cpu_seconds: float  # user + system, the process and the children it waited for
    peak_rss_mib: float
    commands_per_host: float

    def row(self, run: str) -> str:
        per_host = self.hosts or 1
        return (
            f"| {self.hosts} | {run} | {self.seconds:.2f} | {self.seconds / per_host:.3f} "
            f"| {self.cpu_seconds:.2f} | {self.cpu_seconds / per_host:.3f} "
            f"| {self.cpu_seconds / self.seconds:.2f} | {self.peak_rss_mib:.0f} "
            f"| {self.commands_per_host:.0f} |"
        )


def measured(
    command: list[str], hosts: int, cwd: Path = REPO_ROOT, env: dict[str, str] | None = None
) -> Measured:
    """Run ``command``; its wall time and, from wait4, its own resource usage only."""
    with tempfile.TemporaryFile() as output:
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=output)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{text[-4000:]}")
    commands = len(RUN_COMMAND.findall(text))
    return Measured(
        hosts,
        seconds,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,  # KiB on Linux
        commands / max(hosts, 1),
    )


def profile_summary(profile: Path, title: str) -> str:
    """pstats' top entries by cumulative and by own time, as Markdown."""
    sections = [f"# {title}\n"]
    for key in ("cumulative", "tottime"):
        stream = io.StringIO()
        stats = pstats.Stats(str(profile), stream=stream)
        stats.strip_dirs().sort_stats(key).print_stats(PROFILE_TOP)
        text = stream.getvalue()
        sections.append(f"## Top {PROFILE_TOP} by {key}\n\n```\n{text.strip()}\n```\n")
    return "\n".join(sections)


# --pin: the hosts (children of this process, which they inherit it from) on the second core,
# the controller's runs on the first: the controller's wall time without the hosts' CPU.
HOSTS_CORE, CONTROLLER_CORE = 1, 0


def pinned(command: list[str], pin: bool) -> list[str]:
    return ["taskset", "--cpu-list", str(CONTROLLER_CORE), *command] if pin else command


def bench_fleet(
    count: int, work_dir: Path, profile: Path | None, baseline: Path | None, pin: bool = False
) -> dict[str, Measured]:
    repo = build_repos(CACHE_DIR / "repos", [BENCH_OS], rootfs_cache_dir=CACHE_DIR)
    with Fleet(count, BENCH_OS, CACHE_DIR, repo=repo) as fleet:
        data = {
            **repo_data(repo, BENCH_OS),
            "gpu_verify": False,
            "gpu_smoke_test": False,
            "gpu_results_dir": str(work_dir / "results"),
        }
        inventory = fleet.write_inventory(work_dir / f"bench_{count}.py", data)
        arguments = ["-y", "--debug", str(inventory), "deploys/gpu_host.py"]
        pyinfra = [str(Path(sys.executable).with_name("pyinfra")), *arguments]
        gpu_host = pinned(fleet.controller.command(pyinfra), pin)
        figures = {"converge": measured(gpu_host, count), "no-op": measured(gpu_host, count)}
        if baseline is not None:
            env = {**os.environ, "PYTHONPATH": str(baseline)}
            figures["no-op, baseline"] = measured(gpu_host, count, cwd=baseline, env=env)
        figures["ssh true"] = measured(pinned(fleet.ssh_command(fleet.hosts[0], "true"), pin), 1)
        if profile is not None:
            raw = work_dir / f"noop_{count}.prof"
            profiled = [sys.executable, "-m", "cProfile", "-o", str(raw), "-m", "pyinfra"]
            figures["no-op, cProfile"] = measured(
                fleet.controller.command([*profiled, *arguments]), count
            )
            title = f"cProfile of the controller: no-op re-run of gpu_host.py, {count} hosts"
            profile.write_text(profile_summary(raw, title))
        return figures


# Ubuntu 22.04's NVIDIA repository has no CUDA 11.2: the runfile and the archive; the R580
# release its stand-in carries.
ARTIFACTS_OS = "ubuntu22.04"
ARTIFACTS_DRIVER = "580.126.16"


def bench_artifacts(count: int, work_dir: Path) -> None:
    """Bytes fetched per fleet and sent per host, for a converge and a re-run."""
    repo = build_repos(CACHE_DIR / "repos", [ARTIFACTS_OS], rootfs_cache_dir=CACHE_DIR)
    built = build_artifacts(CACHE_DIR)
    sizes = {name: built.path(name).stat().st_size for name in (RUNFILE_NAME, CUDNN_ARCHIVE_NAME)}
    with (
        Fleet(count, ARTIFACTS_OS, CACHE_DIR, repo=repo) as fleet,
        ArtifactServer(fleet, built.directory) as server,
    ):
        data = {
            **repo_data(repo, ARTIFACTS_OS),
            "nvidia_driver_version": ARTIFACTS_DRIVER,
            "cuda_runfile_url": server.url(RUNFILE_NAME),
            "cuda_runfile_sha256": built.runfile_sha256,
            "cudnn_archive_url": server.url(CUDNN_ARCHIVE_NAME),
            "cudnn_archive_sha256": built.cudnn_archive_sha256,
            "gpu_artifact_cache": str(work_dir / f"artifact-cache-{time.time_ns()}"),
            "gpu_verify": False,
        }
        inventory = fleet.write_inventory(work_dir / f"artifacts_{count}.py", data)
        pyinfra = [str(Path(sys.executable).with_name("pyinfra")), "-y", str(inventory)]
        gpu_host = fleet.controller.command([*pyinfra, "deploys/gpu_host.py"])
        received = "find /var/cache/gpufleet/artifacts -type f -printf '%s\\n'"
        for run in ("converge", "re-run"):
            figure = measured(gpu_host, count)
            fetched = sum(server.requests_for(name) * size for name, size in sizes.items())
            sent = [sum(map(int, fleet.ssh(host, received).stdout.split())) for host in fleet.hosts]
            print(
                f"| {count} | {run} | {figure.seconds:.2f} | {fetched / 2**10:.1f} "
                f"| {max(sent) / 2**10:.1f} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/gpufleet-bench"))
    parser.add_argument("--profile", type=Path, help="profile the largest size's no-op to here")
    parser.add_argument("--baseline", type=Path, help="a checkout to time the no-op from too")
    parser.add_argument("--artifacts", action="store_true", help="artifact bytes per fleet/host")
    parser.add_argument(
        "--pin", action="store_true", help="hosts on the second core, the controller on the first"
    )
    arguments = parser.parse_args()
    if arguments.pin:
        os.sched_setaffinity(0, {HOSTS_CORE})
    arguments.work_dir.mkdir(parents=True, exist_ok=True)
    print(f"# {platform.node()}: {os.cpu_count()} cores, {platform.platform()}")
    if arguments.artifacts:
        print("| N | run | wall s | KiB fetched per fleet (total so far) | KiB held per host |")
        print("|---|---|---|---|---|")
        for count in arguments.sizes:
            bench_artifacts(count, arguments.work_dir)
        return
    print("| N | run | wall s | wall s/host | CPU s | CPU s/host | CPU/wall | peak RSS MiB "
          "| cmds/host |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    largest = max(arguments.sizes)
    for count in arguments.sizes:
        profile = arguments.profile if count == largest else None
        figures = bench_fleet(count, arguments.work_dir, profile, arguments.baseline, arguments.pin)
        for run, figure in figures.items():
            print(figure.row(run), flush=True)


if __name__ == "__main__":
    main()
