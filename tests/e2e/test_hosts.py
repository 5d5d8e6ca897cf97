"""The test hosts themselves, of every OS release: they boot like servers, see only the local
mirror, run docker, and leave nothing behind."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from testbed.fleet import REPO_ROOT, Fleet, FleetFactory, TestHost
from testbed.images import build_image_tarball, import_image
from testbed.network import NETNS_DIR, RUN_ROOT, cleanup_stale
from testbed.os_releases import OS_RELEASES
from testbed.repos import RepoTree
from testbed.rootfs import build_rootfs, upstream_sources
from testbed.standin_repo import REPO_HOST, REPO_PORT

pytestmark = pytest.mark.e2e

READY_STATES = {"running", "degraded"}
RELEASES = list(OS_RELEASES)
# What each release's host says of itself: /etc/os-release ID and VERSION_ID, `python3 --version`.
HOST_FACTS = {
    "ubuntu20.04": ("ubuntu", "20.04", "3.8"),
    "ubuntu22.04": ("ubuntu", "22.04", "3.10"),
    "ubuntu24.04": ("ubuntu", "24.04", "3.12"),
    "debian11": ("debian", "11", "3.9"),
    "debian12": ("debian", "12", "3.11"),
    "debian13": ("debian", "13", "3.13"),
}
# One host of each release boots at once: the slowest of them within this (seconds).
SIX_RELEASES_BOOT_LIMIT = 60
DOCKER_INSTALL = (
    "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io"
)


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


@pytest.fixture(scope="module")
def release_fleet(cache_dir: Path, repo_tree: RepoTree) -> Iterator[Fleet]:
    """One host of each OS release, booted in parallel in one fleet for this module's tests."""
    with Fleet(len(RELEASES), RELEASES, cache_dir, repo=repo_tree) as fleet:
        yield fleet


def host_of(fleet: Fleet, release: str) -> TestHost:
    (host,) = [host for host in fleet.hosts if host.os_release.name == release]
    return host


@pytest.fixture(scope="module")
def docker_installs(release_fleet: Fleet) -> dict[str, subprocess.CompletedProcess[str]]:
    """docker.io installed from the local mirror on every release's host at once."""
    with ThreadPoolExecutor(max_workers=len(release_fleet.hosts)) as pool:
        installs = {
            host.os_release.name: pool.submit(release_fleet.ssh, host, DOCKER_INSTALL)
            for host in release_fleet.hosts
        }
        return {name: install.result() for name, install in installs.items()}


def test_hosts_of_every_release_boot_in_parallel(release_fleet: Fleet, tmp_path: Path) -> None:
    print(f"hosts of {', '.join(RELEASES)} booted in {release_fleet.boot_seconds:.1f}s")
    assert [host.os_release.name for host in release_fleet.hosts] == RELEASES
    assert release_fleet.boot_seconds is not None
    assert release_fleet.boot_seconds < SIX_RELEASES_BOOT_LIMIT

    # pyinfra reaches all of them in one run.
    inventory = release_fleet.write_inventory(tmp_path / "inventory.py")
    result = release_fleet.run_pyinfra(str(inventory), "exec", "--", "hostname", timeout=300)
    assert result.returncode == 0, result.stderr
    for host in release_fleet.hosts:
        assert host.name in result.stdout + result.stderr


@pytest.mark.parametrize("release", RELEASES)
def test_host_boots_like_a_server(release_fleet: Fleet, release: str) -> None:
    fleet, host = release_fleet, host_of(release_fleet, release)
    vendor, version_id, python = HOST_FACTS[release]

    os_release = check_ok(fleet.ssh(host, ". /etc/os-release && echo $ID $VERSION_ID"))
    assert os_release.split() == [vendor, version_id]
    assert check_ok(fleet.ssh(host, "python3 --version")).split()[1].startswith(f"{python}.")
    assert check_ok(fleet.ssh(host, "ps -p 1 -o comm=")).strip() == "systemd"
    assert fleet.ssh(host, "systemctl is-system-running").stdout.strip() in READY_STATES
    assert check_ok(fleet.ssh(host, "systemctl is-active ssh")).strip() == "active"
    assert check_ok(fleet.ssh(host, "hostname")).strip() == host.name
    # Each boot gets its own machine id, none is baked into the shared tree.
    assert len(check_ok(fleet.ssh(host, "cat /etc/machine-id")).strip()) == 32
    # What the deploys run besides: sudo, gpg, curl, ip, ps, modprobe.
    check_ok(fleet.ssh(host, "command -v sudo gpg curl ip ps modprobe apt-get"))


@pytest.mark.parametrize("release", RELEASES)
def test_apt_sees_only_the_local_mirror(
    release_fleet: Fleet, repo_tree: RepoTree, cache_dir: Path, release: str
) -> None:
    fleet, host = release_fleet, host_of(release_fleet, release)

    update = check_ok(fleet.ssh(host, "apt-get update 2>&1"))
    assert "W:" not in update and "E:" not in update, update
    sources = check_ok(fleet.ssh(host, "apt-get indextargets --format '$(URI)'"))
    assert sources.split(), "apt has no index targets"
    mirror = f"http://{REPO_HOST}:{REPO_PORT}/os/{release}/"
    assert all(uri.startswith(mirror) for uri in sources.split()), sources
    policy = check_ok(fleet.ssh(host, "apt-cache policy docker.io unattended-upgrades"))
    assert "Candidate: (none)" not in policy, policy

    # apt checks the mirror's signature: without the signed-by key it refuses the same mirror.
    unkeyed = (
        f"mkdir -p /tmp/unkeyed && echo 'deb {mirror} /' > /tmp/unkeyed.list && apt-get update "
        "-o Dir::Etc::SourceList=/tmp/unkeyed.list -o Dir::Etc::SourceParts=/tmp/unkeyed "
        "-o Dir::State::Lists=/tmp/unkeyed 2>&1"
    )
    refused = fleet.ssh(host, unkeyed)
    assert refused.returncode != 0 and "is not signed" in refused.stdout, refused.stdout

    # The archive the release was built from is out of reach.
    upstream = upstream_sources(build_rootfs(release, cache_dir))[0].uri
    outside = fleet.ssh(host, f"curl -sS --max-time 10 -o /dev/null {shlex.quote(upstream)}/")
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
        f"fleet = Fleet(count=2, os_release='debian12', cache_dir=Path({str(cache_dir)!r})); "
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


@pytest.mark.parametrize("release", RELEASES)
def test_docker_runs_containers_inside_a_host(
    release_fleet: Fleet,
    docker_installs: dict[str, subprocess.CompletedProcess[str]],
    cache_dir: Path,
    release: str,
) -> None:
    fleet, host = release_fleet, host_of(release_fleet, release)
    check_ok(docker_installs[release])
    assert check_ok(fleet.ssh(host, "systemctl is-active docker")).strip() == "active"
    image = f"gpufleet-test/{release}:latest"
    import_image(fleet, host, build_image_tarball(release, cache_dir, []), image)

    release_in_image = check_ok(fleet.ssh(host, f"docker run --rm {image} cat /etc/os-release"))
    assert f'VERSION_ID="{HOST_FACTS[release][1]}"' in release_in_image
    # A real container: own pid namespace (the command is pid 1) and its own docker cgroup.
    probe = shlex.quote("echo $$; cat /proc/1/cgroup")
    inside = check_ok(fleet.ssh(host, f"docker run --rm {image} sh -c {probe}"))
    assert inside.splitlines()[0] == "1"
    assert "/docker/" in inside
    # An overlay storage driver (overlay2, or the containerd snapshotter's overlayfs of docker
    # 29), not vfs: /var/lib/docker is a plain directory, not the host's overlay root.
    driver = check_ok(fleet.ssh(host, "docker info --format '{{.Driver}}'")).strip()
    assert driver in {"overlay2", "overlayfs"}

    # A runtime registered in daemon.json, as nvidia-container-runtime will be.
    wrapper = '#!/bin/sh\necho "$@" >> /var/log/gf-runtime.log\nexec runc "$@"\n'
    daemon = {"runtimes": {"gf-runtime": {"path": "/usr/local/bin/gf-runtime"}}}
    (host.root / "usr/local/bin/gf-runtime").write_text(wrapper)
    (host.root / "usr/local/bin/gf-runtime").chmod(0o755)
    (host.root / "etc/docker/daemon.json").write_text(json.dumps(daemon))
    check_ok(fleet.ssh(host, "systemctl restart docker"))
    check_ok(fleet.ssh(host, f"docker run --rm --runtime=gf-runtime {image} true"))
    assert "create" in check_ok(fleet.ssh(host, "cat /var/log/gf-runtime.log"))
