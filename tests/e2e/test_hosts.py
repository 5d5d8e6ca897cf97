"""The test hosts themselves: they boot like servers, see only the local mirror, run docker,
and leave nothing behind."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.fleet import REPO_ROOT, FleetFactory
from testbed.images import build_image_tarball, import_image
from testbed.network import NETNS_DIR, RUN_ROOT, cleanup_stale
from testbed.standin_repo import REPO_HOST, REPO_PORT

pytestmark = pytest.mark.e2e

READY_STATES = {"running", "degraded"}


def _run(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


# Names of what a fleet creates carry its owner's pid: gf<pid>f<n>.
FLEET_NAME = re.compile(r"gf(\d+)f\d+")


def _other_live_runs() -> set[int]:
    """Pids of other live processes owning fleets (parallel test sessions): not ours to judge."""
    names = [path.name for path in NETNS_DIR.glob("gf*")]
    if RUN_ROOT.is_dir():
        names += [path.name for path in RUN_ROOT.iterdir()]
    owners = {int(match[1]) for name in names if (match := FLEET_NAME.match(name))}
    return {pid for pid in owners if pid != os.getpid() and Path(f"/proc/{pid}").exists()}


def _descends_from(pid: int, ancestors: set[int]) -> bool:
    while pid > 1:
        if pid in ancestors:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
    return False


def _host_processes(others: set[int]) -> set[tuple[int, str]]:
    """nspawn and everything outside the machine's own network namespace, but other runs'."""
    own = Path("/proc/self/ns/net").stat().st_ino
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or _descends_from(int(proc.name), others):
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if (proc / "ns/net").stat().st_ino != own or cmdline.startswith("systemd-nspawn"):
                found.add((int(proc.name), cmdline))
        except OSError:
            continue
    return found


def machine_state() -> dict[str, object]:
    """What a fleet could leave on the machine: namespaces, links, mounts, processes."""
    others = _other_live_runs()

    def ours(text: str) -> list[str]:
        return [
            line
            for line in text.splitlines()
            if not any(int(pid) in others for pid in FLEET_NAME.findall(line))
        ]

    return {
        "netns": ours(_run(["ip", "netns", "list"])),
        "links": ours(_run(["ip", "-o", "link", "show"])),
        "mounts": ours(Path("/proc/self/mounts").read_text()),
        "processes": _host_processes(others),
    }


def check_ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stdout}{result.stderr}"
    return result.stdout


def test_host_boots_like_a_server(fleet_factory: FleetFactory, tmp_path: Path) -> None:
    fleet = fleet_factory(count=1)
    host = fleet.hosts[0]

    assert check_ok(fleet.ssh(host, "ps -p 1 -o comm=")).strip() == "systemd"
    assert fleet.ssh(host, "systemctl is-system-running").stdout.strip() in READY_STATES
    assert check_ok(fleet.ssh(host, "systemctl is-active ssh")).strip() == "active"
    assert check_ok(fleet.ssh(host, "hostname")).strip() == host.name
    # Each boot gets its own machine id, none is baked into the shared tree.
    assert len(check_ok(fleet.ssh(host, "cat /etc/machine-id")).strip()) == 32

    inventory = fleet.write_inventory(tmp_path / "inventory.py")
    result = fleet.run_pyinfra(str(inventory), "exec", "--", "hostname", timeout=120)
    assert result.returncode == 0, result.stderr
    assert host.name in result.stdout + result.stderr


def test_apt_sees_only_the_local_mirror(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(count=1)
    host = fleet.hosts[0]

    check_ok(fleet.ssh(host, "apt-get update"))
    sources = check_ok(fleet.ssh(host, "apt-get indextargets --format '$(URI)'"))
    assert sources.split(), "apt has no index targets"
    assert all(uri.startswith(f"http://{REPO_HOST}:{REPO_PORT}/") for uri in sources.split())
    assert "docker.io" in check_ok(fleet.ssh(host, "apt-cache policy docker.io"))

    outside = fleet.ssh(host, "curl -sS --max-time 10 -o /dev/null http://deb.debian.org/debian/")
    # curl: 6 cannot resolve, 7 cannot connect, 28 timed out; anything else is no proof.
    assert outside.returncode in {6, 7, 28}, f"curl {outside.returncode}: {outside.stderr}"
    assert "default" not in check_ok(fleet.ssh(host, "ip route"))


def test_eight_hosts_boot_in_parallel_and_leave_nothing(fleet_factory: FleetFactory) -> None:
    before = machine_state()
    fleet = fleet_factory(count=8)

    answers = {host.name: fleet.ssh(host, "hostname; hostname -I") for host in fleet.hosts}
    for host in fleet.hosts:
        name, address = check_ok(answers[host.name]).split()
        assert (name, address) == (host.name, host.address)
    # Hosts reach each other over the fleet's bridge.
    last = fleet.hosts[-1].address
    connect = f"import socket; socket.create_connection(({last!r}, 22), 5)"
    check_ok(fleet.ssh(fleet.hosts[0], f"python3 -c {shlex.quote(connect)}"))
    print(f"8 hosts booted in {fleet.boot_seconds:.1f}s")

    fleet.close()

    print(f"8 hosts stopped in {fleet.stop_seconds:.1f}s")
    assert machine_state() == before
    assert fleet.boot_seconds is not None and fleet.boot_seconds < 120
    assert fleet.stop_seconds is not None and fleet.stop_seconds < 60


def test_killed_run_is_cleaned_by_the_next(cache_dir: Path) -> None:
    before = machine_state()
    opener = (
        "import sys; from pathlib import Path; from testbed.fleet import Fleet; "
        f"fleet = Fleet(count=2, suite='bookworm', cache_dir=Path({str(cache_dir)!r})); "
        "fleet.__enter__(); print(fleet.prefix, flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", opener],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    prefix = child.stdout.readline().strip()
    assert prefix, "the child run did not open its fleet"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert sorted(path.name for path in NETNS_DIR.glob(f"{prefix}-*")), "nothing was left to clean"

    removed = cleanup_stale()

    assert any(line.startswith(f"{prefix}:") for line in removed)
    assert machine_state() == before


@pytest.mark.parametrize("suite", ["bookworm", "bullseye"])
def test_docker_runs_containers_inside_a_host(
    fleet_factory: FleetFactory, cache_dir: Path, suite: str
) -> None:
    fleet = fleet_factory(count=1, suite=suite)
    host = fleet.hosts[0]
    install = "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io"
    check_ok(fleet.ssh(host, install))
    assert check_ok(fleet.ssh(host, "systemctl is-active docker")).strip() == "active"
    image = f"gpufleet-test/debian:{suite}"
    import_image(fleet, host, build_image_tarball(suite, cache_dir, []), image)

    check_ok(fleet.ssh(host, f"docker run --rm {image} true"))
    # A real container: own pid namespace (the command is pid 1) and its own docker cgroup.
    probe = shlex.quote("echo $$; cat /proc/1/cgroup")
    inside = check_ok(fleet.ssh(host, f"docker run --rm {image} sh -c {probe}"))
    assert inside.splitlines()[0] == "1"
    assert "/docker/" in inside
    assert check_ok(fleet.ssh(host, "docker info --format '{{.Driver}}'")).strip() == "overlay2"

    # A runtime registered in daemon.json, as nvidia-container-runtime will be.
    wrapper = '#!/bin/sh\necho "$@" >> /var/log/gf-runtime.log\nexec runc "$@"\n'
    daemon = {"runtimes": {"gf-runtime": {"path": "/usr/local/bin/gf-runtime"}}}
    (host.root / "usr/local/bin/gf-runtime").write_text(wrapper)
    (host.root / "usr/local/bin/gf-runtime").chmod(0o755)
    (host.root / "etc/docker/daemon.json").write_text(json.dumps(daemon))
    check_ok(fleet.ssh(host, "systemctl restart docker"))
    check_ok(fleet.ssh(host, f"docker run --rm --runtime=gf-runtime {image} true"))
    assert "create" in check_ok(fleet.ssh(host, "cat /var/log/gf-runtime.log"))


def test_bullseye_host_boots(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(count=1, suite="bullseye")
    host = fleet.hosts[0]

    assert check_ok(fleet.ssh(host, ". /etc/os-release; echo $VERSION_ID")).strip() == "11"
    assert check_ok(fleet.ssh(host, "ps -p 1 -o comm=")).strip() == "systemd"
    assert fleet.ssh(host, "systemctl is-system-running").stdout.strip() in READY_STATES
    check_ok(fleet.ssh(host, "apt-get update"))
    quoted = shlex.quote(f"http://{REPO_HOST}:{REPO_PORT}/")
    check_ok(fleet.ssh(host, f"apt-get indextargets --format '$(URI)' | grep -q {quoted}"))
