"""Network namespaces of a test run, and removal of what killed runs left behind.

Every fleet gets a controller namespace holding a bridge (10.213.0.1/24) and one namespace per
host joined to that bridge by a veth pair (host i is 10.213.0.(10+i)). The machine's own
network namespace is never touched: the hosts reach the controller and each other, nothing
else. Names carry a per-fleet prefix ``gf<pid>f<n>`` so leftovers of a killed run are found by
name and their owner's liveness.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CONTROLLER_ADDRESS = "10.213.0.1"
NETWORK_PREFIX_LENGTH = 24
FIRST_HOST_OCTET = 10
MAX_HOSTS = 200

NETNS_DIR = Path("/run/netns")
# Per-run state (overlay layers, keys, console logs) lives on disk, not in RAM.
RUN_ROOT = Path("/var/tmp/gpufleet-test")
# systemd-nspawn keeps a per-machine mount propagation directory here.
NSPAWN_PROPAGATE_DIR = Path("/run/systemd/nspawn/propagate")

PREFIX_PATTERN = re.compile(r"^gf(?P<pid>\d+)f\d+$")
BRIDGE = "gfbr0"
OWNER_FILE = "owner"


class CommandError(RuntimeError):
    """A command run by the test harness failed; the message carries its output."""


def run_command(command: list[str], timeout: float = 60) -> str:
    """Run ``command``; return its stdout, or raise CommandError with stdout and stderr."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise CommandError(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result.stdout


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def in_netns(netns: str, command: list[str]) -> list[str]:
    """``command`` run inside network namespace ``netns`` (only the network is switched)."""
    return ["nsenter", f"--net={netns_path(netns)}", *command]


def _start_time(pid: int) -> str | None:
    """The kernel's start time of process ``pid``: tells a live owner from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name; start time is field 22 overall.
    return stat.rsplit(")", 1)[1].split()[19]


def owner_identity() -> str:
    pid = os.getpid()
    return f"{pid} {_start_time(pid)}"


def new_prefix(sequence: int) -> str:
    return f"gf{os.getpid()}f{sequence}"


def _prefix_is_live(prefix: str) -> bool:
    match = PREFIX_PATTERN.match(prefix)
    if match is None:
        return True  # not ours: never touch it
    pid = int(match["pid"])
    start_time = _start_time(pid)
    if start_time is None:
        return False
    try:
        owner = (RUN_ROOT / prefix / OWNER_FILE).read_text()
    except OSError:
        return True  # owner still setting up, or left only namespaces: pid alone decides
    return owner == f"{pid} {start_time}"


def mount_points() -> list[Path]:
    """Mount points of the machine's mount namespace, in mount order."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        raw = line.split()[4]
        points.append(Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), raw)))
    return points


def mounts_under(directory: Path) -> list[Path]:
    return [point for point in mount_points() if point.is_relative_to(directory)]


def unmount_all_under(directory: Path) -> None:
    """Unmount everything below ``directory``, deepest and latest first."""
    for point in reversed(mounts_under(directory)):
        result = subprocess.run(["umount", str(point)], capture_output=True, check=False)
        if result.returncode != 0:
            # Busy after its processes died (a late close): detach, the kernel frees it later.
            subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)


def _netns_inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def processes_in_netns(path: Path) -> list[int]:
    """Pids of processes living in the network namespace bound at ``path``."""
    inode = _netns_inode(path)
    if inode is None:
        return []
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "ns" / "net").stat().st_ino == inode:
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (e.g. an nspawn of a run directory)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(proc.name))
    return pids


def kill_and_wait(pids: list[int], timeout: float = 10) -> list[int]:
    """SIGKILL ``pids`` and wait for them to go; return those still there at the timeout."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    remaining = pids
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = [pid for pid in remaining if _is_alive(pid)]
    return remaining


def _is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has released everything but its pid


def delete_netns(name: str) -> None:
    if netns_path(name).exists():
        run_command(["ip", "netns", "delete", name])


@dataclass(frozen=True)
class HostNetwork:
    netns: str
    address: str
    controller_link: str

    @property
    def path(self) -> Path:
        return netns_path(self.netns)


class ControllerNetwork:
    """The controller namespace of one fleet and the namespaces of its hosts."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.netns = f"{prefix}-ctl"

    @property
    def path(self) -> Path:
        return netns_path(self.netns)

    def command(self, command: list[str]) -> list[str]:
        return in_netns(self.netns, command)

    def create(self) -> None:
        ip_ctl = ["ip", "-n", self.netns]
        run_command(["ip", "netns", "add", self.netns])
        run_command([*ip_ctl, "link", "set", "lo", "up"])
        run_command([*ip_ctl, "link", "add", BRIDGE, "type", "bridge"])
        address = f"{CONTROLLER_ADDRESS}/{NETWORK_PREFIX_LENGTH}"
        run_command([*ip_ctl, "address", "add", address, "dev", BRIDGE])
        run_command([*ip_ctl, "link", "set", BRIDGE, "up"])

    def add_host(self, index: int) -> HostNetwork:
        if not 0 <= index < MAX_HOSTS:
            raise ValueError(f"host index {index} outside 0..{MAX_HOSTS - 1}")
        host = HostNetwork(
            netns=f"{self.prefix}-h{index}",
            address=f"10.213.0.{FIRST_HOST_OCTET + index}",
            controller_link=f"vh{index}",
        )
        ip_ctl = ["ip", "-n", self.netns]
        ip_host = ["ip", "-n", host.netns]
        run_command(["ip", "netns", "add", host.netns])
        run_command(
            [*ip_ctl, "link", "add", host.controller_link, "type", "veth"]
            + ["peer", "name", "eth0", "netns", host.netns]
        )
        run_command([*ip_ctl, "link", "set", host.controller_link, "master", BRIDGE, "up"])
        address = f"{host.address}/{NETWORK_PREFIX_LENGTH}"
        run_command([*ip_host, "address", "add", address, "dev", "eth0"])
        run_command([*ip_host, "link", "set", "eth0", "up"])
        run_command([*ip_host, "link", "set", "lo", "up"])
        return host

    def has_link(self, link: str) -> bool:
        if not self.path.exists():
            return False
        result = subprocess.run(
            ["ip", "-n", self.netns, "link", "show", link], capture_output=True, check=False
        )
        return result.returncode == 0

    def destroy(self) -> None:
        """Remove the namespaces of this fleet, the controller's last."""
        for path in sorted(NETNS_DIR.glob(f"{self.prefix}-*"), key=lambda p: p == self.path):
            delete_netns(path.name)


def cleanup_stale() -> list[str]:
    """Remove what killed test runs left: processes, mounts, namespaces, run directories.

    Only prefixes whose owning process is gone are touched, so parallel live runs are safe.
    Returns what was removed, for the log.
    """
    prefixes: set[str] = set()
    if RUN_ROOT.is_dir():
        prefixes.update(path.name for path in RUN_ROOT.iterdir())
    if NETNS_DIR.is_dir():
        prefixes.update(path.name.rsplit("-", 1)[0] for path in NETNS_DIR.glob("gf*-*"))
    if NSPAWN_PROPAGATE_DIR.is_dir():
        prefixes.update(path.name.rsplit("-", 1)[0] for path in NSPAWN_PROPAGATE_DIR.glob("gf*-*"))

    removed = []
    for prefix in sorted(prefixes):
        if _prefix_is_live(prefix):
            continue
        run_dir = RUN_ROOT / prefix
        namespaces = sorted(NETNS_DIR.glob(f"{prefix}-*"))
        pids = processes_mentioning(f"{run_dir}/")
        for namespace in namespaces:
            pids.extend(processes_in_netns(namespace))
        stuck = kill_and_wait(sorted(set(pids)))
        if stuck:
            raise RuntimeError(f"stale test processes of {prefix} do not die: {stuck}")
        unmount_all_under(run_dir)
        for propagate in NSPAWN_PROPAGATE_DIR.glob(f"{prefix}-*"):
            unmount_all_under(propagate)
            shutil.rmtree(propagate, ignore_errors=True)
        for namespace in namespaces:
            delete_netns(namespace.name)
        shutil.rmtree(run_dir, ignore_errors=True)
        removed.append(f"{prefix}: {len(pids)} processes, {len(namespaces)} namespaces")
    return removed
