"""
The sandbox: one real test host of a chosen OS release, with gpufleet's main deploy run on it twice.

The host sees the stand-in NVIDIA repositories and its release's mirror only; the deploy runs
through inventories/sandbox.py, twice (the second run changes nothing).

    .venv/bin/python -m testbed.sandbox [--os NAME] [--keep]

--os picks the host's OS release (default: Ubuntu 20.04; --help lists them). Needs root on
Debian 12 (systemd-nspawn, network namespaces). --keep leaves the host up until Enter is pressed,
for `pyinfra inventories/sandbox.py ...` or ssh by hand (the command is shown).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from testbed.fleet import PYINFRA, REPO_ROOT, Fleet
from testbed.os_releases import DEFAULT_SANDBOX_OS, OS_RELEASES
from testbed.repos import build_repos
from testbed.rootfs import default_cache_dir
from testbed.runs import repo_data

CACHE_DIR = default_cache_dir()
STATE = Path(os.environ.get("GPUFLEET_SANDBOX_STATE", "/run/gpufleet-sandbox/sandbox.json"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument(
        "--os",
        default=DEFAULT_SANDBOX_OS,
        choices=list(OS_RELEASES),
        metavar="NAME",
        help=f"the host's OS release, one of: {', '.join(OS_RELEASES)} "
        f"(default: {DEFAULT_SANDBOX_OS})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the host up until Enter")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("systemd-nspawn") is None:
        print("The sandbox needs root and systemd-nspawn on Debian 12: run `bash .ci/setup` "
              "as root, then this command as root.", file=sys.stderr)  # fmt: skip
        return 2

    release = OS_RELEASES[args.os]
    print(f"--> Building the stand-in NVIDIA repositories and the {release.name} mirror (cached)")
    repo = build_repos(CACHE_DIR / "repos", [release], rootfs_cache_dir=CACHE_DIR)
    print(f"--> Booting a {release.vendor} {release.version_id} test host ({release.name})")
    with Fleet(count=1, os_release=release, cache_dir=CACHE_DIR, repo=repo) as fleet:
        (host,) = fleet.hosts
        STATE.parent.mkdir(parents=True, exist_ok=True)
        data = {
            **repo_data(repo, release),
            # The sandbox has no GPU and cannot pull tensorflow_image: verification (and its
            # honest failure at the framework layer) is shown by tests/e2e/test_verify.py.
            "gpu_verify": False,
            "ssh_user": "root",
            "ssh_key": str(fleet.ssh_key),
            "ssh_strict_host_key_checking": "accept-new",
            "ssh_known_hosts_file": str(fleet.run_dir / "known_hosts"),
        }
        STATE.write_text(json.dumps({"address": host.address, "data": data}, indent=2))
        env = {**os.environ, "GPUFLEET_SANDBOX_STATE": str(STATE)}
        try:
            for attempt in ("first run: converge the bare host", "second run: nothing to change"):
                print(f"--> pyinfra inventories/sandbox.py deploys/gpu_host.py ({attempt})")
                command = [str(PYINFRA), "-y", "inventories/sandbox.py", "deploys/gpu_host.py"]
                result = subprocess.run(fleet.controller.command(command), cwd=REPO_ROOT, env=env)
                if result.returncode != 0:
                    return result.returncode
            if args.keep:
                ssh = " ".join(shlex.quote(part) for part in fleet.ssh_command(host, "bash"))
                print(f"--> The host is up at {host.address}; a shell on it:\n    {ssh}")
                input("--> Press Enter to stop it. ")
        finally:
            STATE.unlink(missing_ok=True)
    print("--> Sandbox host stopped; nothing is left behind.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
