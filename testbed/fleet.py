"""A fleet of booted test hosts for end-to-end tests, benchmarks and the sandbox.

    with Fleet(count=8, os_release="ubuntu22.04", repo=repo_tree, cache_dir=cache) as fleet:
        inventory = fleet.write_inventory(tmp_path / "inventory.py")
        fleet.run_pyinfra(str(inventory), "deploys/docker.py")

Hosts boot in parallel from the cached root filesystem of their OS release (one release for the
fleet, or one per host: ``os_release=["debian12", "ubuntu24.04"]``); pyinfra, ssh and the local
apt mirror run in the fleet's controller namespace, the only network the hosts can reach. Leaving
the block (normally, on error, on Ctrl-C, or at interpreter exit) stops the hosts and removes
everything the fleet created; a run killed outright is cleaned by the next one.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import pprint
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

from testbed.machine import (
    AptRepository,
    HostBootError,
    Machine,
    host_files,
    ssh_command,
    start_http_server,
    stop_process,
)
from testbed.network import (
    RUN_ROOT,
    ControllerNetwork,
    cleanup_stale,
    kill_and_wait,
    new_prefix,
    owner_identity,
    processes_in_netns,
    run_command,
)
from testbed.os_releases import OsRelease
from testbed.rootfs import build_rootfs, os_release
from testbed.standin_repo import REPO_HOST, REPO_PORT

REPO_ROOT = Path(__file__).resolve().parents[1]
PYINFRA = Path(sys.executable).parent / "pyinfra"
DEFAULT_BOOT_TIMEOUT = 180.0
DEFAULT_STOP_TIMEOUT = 15.0
# The release of the hosts fleet_factory() boots unless told otherwise: the only one whose NVIDIA
# repository carries CUDA 11.2.
DEFAULT_FLEET_OS = "ubuntu20.04"

_fleet_sequence = itertools.count()

# One OS release (an OsRelease or its name) for every host of a fleet, or one per host.
OsReleases = OsRelease | str | Sequence[OsRelease | str]


@dataclass(frozen=True)
class TestHost:
    __test__ = False  # not a pytest test class, whatever its name

    name: str
    address: str
    # The host's / as seen from the machine running the tests: put files here directly.
    root: Path
    console_log: Path
    os_release: OsRelease


class FleetFactory(Protocol):
    """Opens fleets that are closed for the caller (the ``fleet_factory`` fixture)."""

    def __call__(
        self,
        count: int = 1,
        os_release: OsReleases = DEFAULT_FLEET_OS,
        boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
    ) -> Fleet: ...


# Each booted host's systemd and journald take inotify instances of the machine's one user (root):
# Debian's default limit of 128 stops the boot of some 20 hosts ("Too many open files").
INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_INSTANCES_WANTED = 1024


def raise_inotify_instances() -> None:
    """Raise the machine's inotify instance limit to INOTIFY_INSTANCES_WANTED (never lower it)."""
    if int(INOTIFY_INSTANCES.read_text()) < INOTIFY_INSTANCES_WANTED:
        INOTIFY_INSTANCES.write_text(f"{INOTIFY_INSTANCES_WANTED}\n")


def host_releases(count: int, releases: OsReleases) -> list[OsRelease]:
    """The OS release of each of ``count`` hosts: one for all, or one per host."""
    if isinstance(releases, (str, OsRelease)):
        return [os_release(releases)] * count
    per_host = [os_release(release) for release in releases]
    if len(per_host) != count:
        raise ValueError(f"{len(per_host)} OS releases for {count} hosts")
    return per_host


class Fleet:
    """``count`` booted hosts of ``os_release`` that see the local test mirror ``repo``.

    ``os_release`` is a release (OsRelease or its name, e.g. "ubuntu22.04") for every host, or
    a sequence of one per host.
    """

    def __init__(
        self,
        count: int,
        os_release: OsReleases,
        cache_dir: Path,
        repo: AptRepository | None = None,
        boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
    ) -> None:
        self.count = count
        self.os_releases = host_releases(count, os_release)
        self.cache_dir = cache_dir
        self.repo = repo
        self.boot_timeout = boot_timeout
        self.prefix = new_prefix(next(_fleet_sequence))
        self.run_dir = RUN_ROOT / self.prefix
        self.ssh_key = self.run_dir / "id_ed25519"
        self.known_hosts = self.run_dir / "known_hosts"
        self.controller = ControllerNetwork(self.prefix)
        self.machines: list[Machine] = []
        self.server: subprocess.Popen[bytes] | None = None
        self.boot_seconds: float | None = None
        self.stop_seconds: float | None = None
        self._closed = False

    @property
    def hosts(self) -> list[TestHost]:
        return [
            TestHost(
                machine.name,
                machine.network.address,
                machine.root,
                machine.console_log,
                machine.os_release,
            )
            for machine in self.machines
        ]

    @property
    def os_release(self) -> OsRelease:
        """The OS release of the fleet's hosts (an error for a fleet of several releases)."""
        releases = set(self.os_releases)
        if len(releases) != 1:
            names = ", ".join(sorted(release.name for release in releases))
            raise ValueError(f"fleet {self.prefix} runs several OS releases: {names}")
        return self.os_releases[0]

    def __enter__(self) -> Fleet:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("open a Fleet from the main thread (child death signals)")
        cleanup_stale()
        trees = {
            release: build_rootfs(release, self.cache_dir) for release in set(self.os_releases)
        }
        atexit.register(self.close)
        try:
            self._open([trees[release] for release in self.os_releases])
        except BaseException as error:
            try:
                self.close()
            except RuntimeError as cleanup_error:
                error.add_note(str(cleanup_error))
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _open(self, trees: list[Path]) -> None:
        started = time.monotonic()
        raise_inotify_instances()
        self.run_dir.mkdir(parents=True)
        (self.run_dir / "owner").write_text(owner_identity())
        # Present from the start, or pyinfra's first connect logs "Failed to load host keys".
        self.known_hosts.touch()
        run_command(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.prefix,
                     "-f", str(self.ssh_key)])  # fmt: skip
        public_key = self.ssh_key.with_suffix(".pub").read_text()
        self.controller.create()
        if self.repo is not None:
            self.serve(self.repo.root)
        for index, (release, rootfs) in enumerate(zip(self.os_releases, trees, strict=True)):
            network = self.controller.add_host(index)
            machine = Machine(
                name=network.netns,
                os_release=release,
                rootfs=rootfs,
                state_dir=self.run_dir / f"h{index}",
                network=network,
                controller=self.controller,
                ssh_key=self.ssh_key,
            )
            self.machines.append(machine)
            machine.prepare(host_files(machine.name, release, public_key, self.repo))
            machine.start()
        pool = ThreadPoolExecutor(max_workers=self.count)
        try:
            waits = [pool.submit(m.wait_ready, self.boot_timeout) for m in self.machines]
            errors = [str(error) for wait in waits if (error := wait.exception()) is not None]
        finally:
            # On Ctrl-C do not wait for the boots: close() stops the hosts, ending the waits.
            pool.shutdown(wait=False, cancel_futures=True)
        if errors:
            raise HostBootError("\n\n".join(errors))
        self._know_host_keys()
        self.boot_seconds = time.monotonic() - started

    def _know_host_keys(self) -> None:
        """The hosts' keys, from their trees, in the fleet's known_hosts: pyinfra's first
        connect then has no "Added host key" line to log."""
        with self.known_hosts.open("w") as known_hosts:
            for machine in self.machines:
                for public_key in sorted((machine.root / "etc/ssh").glob("ssh_host_*_key.pub")):
                    key_type, key = public_key.read_text().split()[:2]
                    known_hosts.write(f"{machine.network.address} {key_type} {key}\n")

    def serve(self, root: Path) -> None:
        """Serve ``root`` over HTTP at the repo address inside the controller namespace."""
        if self.server is not None:
            raise RuntimeError("this fleet already serves a directory")
        self.server = start_http_server(
            self.controller.command, root, (REPO_HOST, REPO_PORT), self.run_dir / "http.log"
        )

    def ssh(
        self, host: TestHost | str, command: str, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run the shell ``command`` on ``host`` (a TestHost or its name) as root."""
        return self._machine(host).ssh(command, timeout=timeout)

    def reboot(self, host: TestHost | str) -> None:
        """Reboot ``host`` from inside (systemd's own reboot) and wait until it is up again."""
        machine = self._machine(host)
        reboots = machine.reboots
        # The connection may drop, or hang, before ssh reports the command's status.
        with contextlib.suppress(subprocess.TimeoutExpired):
            machine.ssh("systemctl reboot", timeout=30)
        deadline = time.monotonic() + self.boot_timeout
        while machine.reboots == reboots:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{machine.name} did not reboot within {self.boot_timeout}s")
            time.sleep(0.2)
        machine.wait_ready(self.boot_timeout)

    def _machine(self, host: TestHost | str) -> Machine:
        name = host if isinstance(host, str) else host.name
        for machine in self.machines:
            if machine.name == name:
                return machine
        raise KeyError(f"no host {name} in this fleet")

    def ssh_command(self, host: TestHost, command: str) -> list[str]:
        """The argv that :meth:`ssh` runs, for callers that need their own subprocess."""
        return ssh_command(self.controller, self.ssh_key, host.address, command)

    def write_inventory(
        self,
        path: Path,
        data: dict[str, object] | None = None,
        host_data: dict[str, dict[str, object]] | None = None,
        hosts: Sequence[TestHost] | None = None,
    ) -> Path:
        """Write a pyinfra inventory of the hosts (or of ``hosts``); ``host_data`` is keyed by
        host name."""
        unknown = set(host_data or {}) - {host.name for host in self.hosts}
        if unknown:
            raise KeyError(f"host_data for hosts not in this fleet: {sorted(unknown)}")
        connection = {
            "ssh_user": "root",
            "ssh_key": str(self.ssh_key),
            # The fleet's own known_hosts, gone with the fleet: no prompt, no warning per host.
            "ssh_strict_host_key_checking": "accept-new",
            "ssh_known_hosts_file": str(self.known_hosts),
        }
        entries = [
            (host.address, {**connection, **(data or {}), **(host_data or {}).get(host.name, {})})
            for host in (self.hosts if hosts is None else hosts)
        ]
        path.write_text(
            f"# Throwaway gpufleet test hosts of fleet {self.prefix}.\n"
            f"test_hosts = {pprint.pformat(entries, width=96, sort_dicts=False)}\n"
        )
        return path

    def run_pyinfra(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        """Run ``pyinfra -y *args`` from the repository root in the controller namespace."""
        return subprocess.run(
            self.controller.command([str(PYINFRA), "-y", *args]),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def close(self) -> None:
        """Stop every host and remove all the fleet created; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        started = time.monotonic()
        problems = []
        with ThreadPoolExecutor(max_workers=max(len(self.machines), 1)) as pool:
            stops = [pool.submit(m.stop, DEFAULT_STOP_TIMEOUT) for m in self.machines]
            problems += [str(error) for stop in stops if (error := stop.exception()) is not None]
        if self.server is not None:
            stop_process(self.server)
        kill_and_wait(processes_in_netns(self.controller.path))
        self.controller.destroy()
        run_command(["rm", "-rf", "--one-file-system", str(self.run_dir)])
        with contextlib.suppress(OSError):
            RUN_ROOT.rmdir()  # only when no other fleet is running
        if self.controller.path.exists():
            problems.append(f"netns {self.controller.netns}")
        if self.run_dir.exists():
            problems.append(f"directory {self.run_dir}")
        self.stop_seconds = time.monotonic() - started
        if problems:
            raise RuntimeError(f"fleet {self.prefix} left behind:\n" + "\n".join(problems))
