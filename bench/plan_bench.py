"""
The controller's cost of planning gpu_host per host, without SSH or test hosts: the deploy file
(deploys/gpu_host.py) planned in-process as `pyinfra INVENTORY deploys/gpu_host.py` plans it (CLI
mode: each host execs the file, and each operation call reads the stack for its order), on N
@fake hosts of the unit tests' harness (tests/fakehost.py) converged with `gpu_verify: false`,
i.e. a no-op re-run. Prints figures; it is not a timed test.

    .venv/bin/python -m bench.plan_bench [--sizes 1 8 32] [--profile FILE] [--deploy FILE]

Each size runs in a fresh process: wall time and CPU seconds (user + system) of the planning,
the process's peak RSS (ru_maxrss, imports included), and the operations planned per host.
`--profile` plans the largest size once more under cProfile and writes its top entries by own
time as Markdown. `--deploy` plans another deploy file (the before of an edit to it).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path

PROFILE_TOP = 20


@dataclass(frozen=True)
class Planned:
    hosts: int
    seconds: float
    cpu_seconds: float  # user + system of this process while planning
    peak_rss_mib: float
    operations_per_host: float

    def row(self) -> str:
        return (
            f"| {self.hosts} | {self.seconds:.2f} | {self.cpu_seconds:.2f} "
            f"| {self.cpu_seconds / self.hosts:.4f} | {self.peak_rss_mib:.0f} "
            f"| {self.operations_per_host:.0f} |"
        )


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def plan(hosts: int, deploy_file: str, profile: str | None = None) -> Planned:
    """Plan ``deploy_file`` on ``hosts`` converged @fake hosts, in CLI mode (run in a child)."""
    # Imported here, in the child: pyinfra_cli patches the process for gevent, as the CLI runs.
    import pyinfra
    from pyinfra.api.state import StateStage
    from pyinfra.context import ctx_state
    from pyinfra_cli.util import load_deploy_file

    from tests.fakehost import FIXTURE_KEY_DATA, converged_ubuntu_2004, prepare

    host = converged_ubuntu_2004()
    data = {**FIXTURE_KEY_DATA, "gpu_verify": False}
    profiler = cProfile.Profile()
    started, cpu_started = time.perf_counter(), cpu_seconds()
    # The inventory and @fake connections (an empty API deploy); then the deploy file, as
    # pyinfra_cli's _prepare_deploy_operations loads it.
    state = prepare({f"gpu-{i:03d}": (host, data) for i in range(hosts)}, lambda: None)
    pyinfra.is_cli = True
    state.set_stage(StateStage.Prepare)
    if profile:
        profiler.enable()
    with ctx_state.use(state):
        load_deploy_file(state, deploy_file)
    if profile:
        profiler.disable()
        profiler.dump_stats(profile)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    operations = sum(len(fake.op_hash_order) for fake in state.inventory)
    peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return Planned(hosts, seconds, cpu, peak_rss_kib / 1024, operations / hosts)


def in_child(hosts: int, deploy_file: str, profile: str | None = None) -> Planned:
    """``plan`` in a fresh interpreter: its own imports, caches and peak RSS."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as child:
        return child.submit(plan, hosts, deploy_file, profile).result()


def profile_summary(raw: str, title: str) -> str:
    stream = io.StringIO()
    pstats.Stats(raw, stream=stream).sort_stats("tottime").print_stats(PROFILE_TOP)
    return (
        f"# {title}\n\n## Top {PROFILE_TOP} by tottime\n\n```\n{stream.getvalue().strip()}\n```\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--deploy", default="deploys/gpu_host.py", help="the deploy file to plan")
    parser.add_argument("--profile", type=Path, help="profile the largest size to here (.md)")
    arguments = parser.parse_args()
    print(
        f"# {platform.node()}: {os.cpu_count()} cores, {platform.platform()}, Python "
        f"{platform.python_version()}, pyinfra {version('pyinfra')}, {arguments.deploy}"
    )
    print("| N | wall s | CPU s | CPU s/host | peak RSS MiB | ops/host |")
    print("|---|---|---|---|---|---|")
    for hosts in arguments.sizes:
        print(in_child(hosts, arguments.deploy).row(), flush=True)
    if arguments.profile:
        hosts = max(arguments.sizes)
        raw = str(arguments.profile.with_suffix(".prof"))
        profiled = in_child(hosts, arguments.deploy, raw)
        title = f"cProfile of planning {arguments.deploy} on {hosts} @fake hosts (CLI mode)"
        arguments.profile.write_text(profile_summary(raw, title))
        os.unlink(raw)
        print(f"profiled: {profiled.seconds:.2f} s wall, {profiled.cpu_seconds:.2f} s CPU")


if __name__ == "__main__":
    main()
