"""
The sandbox: one real test host of a chosen OS release, taken from bare to converged by gpufleet's
main deploy (twice: the second run changes nothing), then verified layer by layer.

The host sees the stand-in NVIDIA repositories and its release's mirror only, and has no GPU: the
verification ends with its honest verdict, no NVIDIA GPU on the PCI bus.

    .venv/bin/python -m testbed.sandbox [--os NAME] [--keep]
    .venv/bin/python -m testbed.sandbox exec -- \
        .venv/bin/pyinfra inventories/sandbox/inventory.py deploys/verify.py
    .venv/bin/python -m testbed.sandbox stop

--os picks the host's OS release (default: Ubuntu 20.04; --help lists them). --keep leaves the
host up after the runs; `exec` runs a command where the host is reachable (the sandbox's own
network namespace), and `stop` ends a kept sandbox. Needs root on Debian 12 (systemd-nspawn,
network namespaces).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from testbed.fleet import PYINFRA, REPO_ROOT, Fleet
from testbed.network import in_netns
from testbed.os_releases import DEFAULT_SANDBOX_OS, OS_RELEASES, OsRelease
from testbed.repos import build_repos
from testbed.rootfs import default_cache_dir
from testbed.runs import repo_data

CACHE_DIR = default_cache_dir()
STATE = Path(os.environ.get("GPUFLEET_SANDBOX_STATE", "/run/gpufleet-sandbox/sandbox.json"))
INVENTORY = "inventories/sandbox/inventory.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    start = commands.add_parser("start", help="boot, converge and verify a host (the default)")
    for options in (parser, start):
        options.add_argument(
            "--os",
            default=DEFAULT_SANDBOX_OS,
            choices=list(OS_RELEASES),
            metavar="NAME",
            help=f"the host's OS release, one of: {', '.join(OS_RELEASES)} "
            f"(default: {DEFAULT_SANDBOX_OS})",
        )
        options.add_argument("--keep", action="store_true", help="keep the host up until `stop`")
    run = commands.add_parser("exec", help="run a command where the kept host is reachable")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="the command, after --")
    commands.add_parser("stop", help="stop a kept sandbox")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("systemd-nspawn") is None:
        print("The sandbox needs root and systemd-nspawn on Debian 12: run `bash .ci/setup` "
              "as root, then this command as root.", file=sys.stderr)  # fmt: skip
        return 2
    if args.command == "exec":
        return exec_in_sandbox(args.argv)
    if args.command == "stop":
        return stop_sandbox()
    return run_sandbox(OS_RELEASES[args.os], args.keep)


def running_sandbox() -> dict[str, Any] | None:
    """The kept sandbox's state file, None when none runs."""
    try:
        state: dict[str, Any] = json.loads(STATE.read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(state["pid"], 0)
    except OSError:
        return None
    return state


def exec_in_sandbox(argv: list[str]) -> int:
    command = argv[1:] if argv[:1] == ["--"] else argv
    state = running_sandbox()
    if state is None:
        print("No sandbox is running: start one with `.venv/bin/python -m testbed.sandbox "
              "--keep`.", file=sys.stderr)  # fmt: skip
        return 2
    if not command:
        print("Name the command after --, e.g. exec -- .venv/bin/pyinfra "
              f"{INVENTORY} deploys/verify.py", file=sys.stderr)  # fmt: skip
        return 2
    env = {**os.environ, "GPUFLEET_SANDBOX_STATE": str(STATE)}
    return subprocess.run(in_netns(state["controller_netns"], command), env=env).returncode


def stop_sandbox() -> int:
    state = running_sandbox()
    if state is None:
        print("No sandbox is running.")
        return 0
    os.kill(state["pid"], signal.SIGTERM)
    print(f"--> Stopping the sandbox (pid {state['pid']}); it removes its host and network.")
    return 0


class Stopped(Exception):
    """`stop` asked the kept sandbox to end."""


def _stop(signum: int, frame: object) -> None:
    raise Stopped


def run_sandbox(release: OsRelease, keep: bool) -> int:
    if running_sandbox() is not None:
        print("A sandbox is running already: `.venv/bin/python -m testbed.sandbox stop` ends it.",
              file=sys.stderr)  # fmt: skip
        return 2
    print(f"--> Building the stand-in NVIDIA repositories and the {release.name} mirror (cached)")
    repo = build_repos(CACHE_DIR / "repos", [release], rootfs_cache_dir=CACHE_DIR)
    print(f"--> Booting a {release.vendor} {release.version_id} test host ({release.name})")
    # `stop` (SIGTERM) unwinds the fleet like Ctrl-C does: its exit removes the host and network.
    signal.signal(signal.SIGTERM, _stop)
    try:
        with Fleet(count=1, os_release=release, cache_dir=CACHE_DIR, repo=repo) as fleet:
            return converge_and_verify(fleet, repo, release, keep)
    except Stopped:
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        STATE.unlink(missing_ok=True)
        print("--> Sandbox host stopped; nothing is left behind.")


def converge_and_verify(fleet: Fleet, repo: Any, release: OsRelease, keep: bool) -> int:
    (host,) = fleet.hosts
    results = fleet.run_dir / "results"
    data = {
        **repo_data(repo, release),
        # gpu_host would pull tensorflow_image, which no test host can reach: the sandbox
        # verifies with deploys/verify.py instead, which never pulls.
        "gpu_verify": False,
        "gpu_results_dir": str(results),
        "ssh_user": "root",
        "ssh_key": str(fleet.ssh_key),
        "ssh_strict_host_key_checking": "accept-new",
        "ssh_known_hosts_file": str(fleet.known_hosts),
    }
    STATE.parent.mkdir(parents=True, exist_ok=True)
    STATE.write_text(
        json.dumps(
            {
                "address": host.address,
                "data": data,
                "pid": os.getpid(),
                "controller_netns": fleet.controller.netns,
            },
            indent=2,
        )
    )
    steps = (
        ("deploys/gpu_host.py", "first run: converge the bare host"),
        ("deploys/gpu_host.py", "second run: nothing to change"),
        ("deploys/verify.py", "verify layer by layer: this host has no GPU"),
    )
    for deploy, what in steps:
        print(f"--> pyinfra {INVENTORY} {deploy} ({what})", flush=True)
        command = [str(PYINFRA), "-y", INVENTORY, deploy]
        result = subprocess.run(
            fleet.controller.command(command),
            cwd=REPO_ROOT,
            env={**os.environ, "GPUFLEET_SANDBOX_STATE": str(STATE)},
        )
        if deploy.endswith("gpu_host.py") and result.returncode != 0:
            return result.returncode
    verdict = verification_verdict(results / f"{host.address}.json")
    print(verdict, flush=True)
    if keep:
        sandbox = ".venv/bin/python -m testbed.sandbox"
        print(f"--> The host is up at {host.address}. From this checkout:\n"
              f"    {sandbox} exec -- .venv/bin/pyinfra {INVENTORY} deploys/verify.py\n"
              f"    {sandbox} exec -- ssh -i {fleet.ssh_key} root@{host.address}\n"
              f"    {sandbox} stop", flush=True)  # fmt: skip
        signal.pause()
    return 0


def verification_verdict(result_file: Path) -> str:
    """The verification's result, one line per layer, as the result file has it."""
    try:
        verdict = json.loads(result_file.read_text())["verdict"]
    except (OSError, ValueError, KeyError) as error:
        return f"--> No verification result ({result_file}: {error})"
    lines = [f"--> {verdict['summary']}"]
    for layer in verdict["layers"]:
        failing = [check for check in layer["checks"] if check["passed"] is not True]
        detail = f": {failing[0]['problem'] or failing[0]['evidence']}" if failing else ""
        lines.append(f"    {layer['layer']:<10} {layer['state']}{detail}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
