"""One test host: an OS release's tree booted with systemd-nspawn on a throwaway overlay.

The cached root filesystem is the read-only lower layer; each host writes to its own upper
layer, so a boot copies nothing and stopping removes every trace by unmounting and deleting
one directory. /var/lib/docker and /var/lib/containerd are plain directories bind-mounted from
the host's state directory, because docker's overlay2 driver and containerd's overlayfs
snapshotter (docker 29's image store, on Ubuntu 22.04 and 24.04) cannot stack on an overlay.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from testbed.network import (
    NSPAWN_PROPAGATE_DIR,
    ControllerNetwork,
    HostNetwork,
    delete_netns,
    kill_and_wait,
    mounts_under,
    processes_in_netns,
    processes_mentioning,
    run_command,
    unmount_all_under,
)
from testbed.os_releases import OsRelease

SSH_OPTIONS = (
    "-o", "BatchMode=yes",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "StrictHostKeyChecking=no",
    "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=5",
)  # fmt: skip
SSH_CONNECT_FAILED = 255
APT_SOURCE_FILE = "etc/apt/sources.list.d/gpufleet-test.list"
CONSOLE_TAIL_LINES = 40
# Directories of the host's /var/lib kept outside its overlay root (see the module docstring).
BOUND = ("docker", "containerd")
JOURNAL_READ_TIMEOUT = 30
READY_STATES = ("running", "degraded")
PR_SET_PDEATHSIG = 1
NETNS_TEARDOWN_TIMEOUT = 10.0
# systemd-nspawn's exit status when the host's systemd rebooted (systemd-nspawn@.service restarts
# the container on it: RestartForceExitStatus=133).
NSPAWN_REBOOT_STATUS = 133


class AptRepository(Protocol):
    """The local test mirror as the hosts see it (testbed.repos.RepoTree)."""

    @property
    def root(self) -> Path: ...

    @property
    def key_path(self) -> Path: ...

    def os_source_line(self, release: OsRelease | str) -> str: ...

    def os_keyring_path_on_host(self) -> str: ...


class HostBootError(RuntimeError):
    """A host did not come up; the message ends with the tail of its console."""


@dataclass(frozen=True)
class HostFile:
    content: bytes
    mode: int = 0o644


def host_files(
    name: str, release: OsRelease, public_key: str, repo: AptRepository | None
) -> dict[str, HostFile]:
    """Files that make a shared root filesystem of ``release`` into host ``name`` (paths relative
    to /)."""
    files = {
        "etc/hostname": HostFile(f"{name}\n".encode()),
        "root/.ssh/authorized_keys": HostFile(public_key.encode(), 0o600),
    }
    if repo is not None:
        keyring = repo.os_keyring_path_on_host().lstrip("/")
        files[keyring] = HostFile(repo.key_path.read_bytes())
        files[APT_SOURCE_FILE] = HostFile(f"{repo.os_source_line(release)}\n".encode())
    return files


def ssh_command(controller: ControllerNetwork, key: Path, address: str, command: str) -> list[str]:
    """ssh as root from the controller namespace, leaving no known_hosts entry anywhere."""
    return controller.command(["ssh", "-i", str(key), *SSH_OPTIONS, f"root@{address}", command])


def _die_with_parent() -> None:
    # Runs in the child before exec: if the test process dies hard, nspawn gets SIGTERM and
    # powers the host off; the next run's cleanup_stale() removes the rest.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_process(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a long-running helper tied to this process, output to ``log``.

    Call from the main thread only: the kernel sends the death signal when the *thread* that
    started the child ends.
    """
    with log.open("ab") as output:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches pytest, which stops hosts
            preexec_fn=_die_with_parent,
        )


def start_http_server(
    in_namespace: Callable[[list[str]], list[str]],
    root: Path,
    address: tuple[str, int],
    log: Path,
    timeout: float = 10.0,
) -> subprocess.Popen[bytes]:
    """Serve ``root`` with Python's http.server at ``address``, the command wrapped by
    ``in_namespace`` (a network namespace's); returns once the socket is bound."""
    host, port = address
    command = [sys.executable, "-u", "-m", "http.server", "--bind", host,
               "--directory", str(root), str(port)]  # fmt: skip
    server = start_process(in_namespace(command), log)
    deadline = time.monotonic() + timeout
    # http.server prints its banner only once the socket is bound.
    while "Serving HTTP" not in log.read_text():
        if server.poll() is not None or time.monotonic() > deadline:
            stop_process(server)
            raise RuntimeError(f"HTTP server for {root} did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return server


def stop_process(process: subprocess.Popen[bytes], timeout: float = 5) -> None:
    """Terminate a helper, killing it when it does not end within ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Machine:
    """One nspawn host: its state directory, overlay root, namespace and nspawn process."""

    def __init__(
        self,
        name: str,
        os_release: OsRelease,
        rootfs: Path,
        state_dir: Path,
        network: HostNetwork,
        controller: ControllerNetwork,
        ssh_key: Path,
    ) -> None:
        self.name = name
        self.os_release = os_release
        self.rootfs = rootfs
        self.state_dir = state_dir
        self.network = network
        self.controller = controller
        self.ssh_key = ssh_key
        self.process: subprocess.Popen[bytes] | None = None
        self.boot_state = ""
        self.reboots = 0
        self._stopping = threading.Event()

    @property
    def root(self) -> Path:
        """The host's / as seen from the machine running the tests (while it is mounted)."""
        return self.state_dir / "root"

    @property
    def console_log(self) -> Path:
        return self.state_dir / "console.log"

    def prepare(self, files: dict[str, HostFile]) -> None:
        """Mount the overlay root and write the per-host ``files`` into it."""
        layers = {layer: self.state_dir / layer for layer in ("upper", "work", "root", *BOUND)}
        for layer in layers.values():
            layer.mkdir(parents=True)
        options = f"lowerdir={self.rootfs},upperdir={layers['upper']},workdir={layers['work']}"
        run_command(["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)])
        for relative, file in files.items():
            path = self.root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(file.content)
            path.chmod(file.mode)
        (self.root / "root/.ssh").chmod(0o700)

    def start(self) -> None:
        """Boot the host; a reboot inside it boots it again on the same overlay."""
        self.process = self._start_nspawn()
        threading.Thread(target=self._restart_on_reboot, name=f"{self.name}-reboots").start()

    def _restart_on_reboot(self) -> None:
        # The nspawn started here gets its death signal when this thread ends, which is only
        # after that nspawn exited: for good, or for a reboot, when it is replaced.
        while self.process is not None:
            if self.process.wait() != NSPAWN_REBOOT_STATUS or self._stopping.is_set():
                return
            self.process = self._start_nspawn()
            # Counted once the new nspawn is in place: a waiter that sees the count change
            # must not find the exited one.
            self.reboots += 1

    def _start_nspawn(self) -> subprocess.Popen[bytes]:
        command = [
            "systemd-nspawn",
            "--boot",
            "--quiet",
            # No system bus on the machine: neither register nor ask for a scope unit.
            "--register=no",
            "--keep-unit",
            f"--directory={self.root}",
            f"--machine={self.name}",
            f"--network-namespace-path={self.network.path}",
            # Docker in the host needs all capabilities, keyring and bpf syscalls.
            "--capability=all",
            "--system-call-filter=@keyring bpf",
            *(f"--bind={self.state_dir / name}:/var/lib/{name}" for name in BOUND),
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
            "--console=read-only",
        ]
        env = {
            **os.environ,
            "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "1",
            "SYSTEMD_COLORS": "0",
            "TERM": "dumb",  # passed to the host's systemd: a console log without escapes
        }
        return start_process(command, self.console_log, env)

    def console_tail(self, lines: int = CONSOLE_TAIL_LINES) -> str:
        try:
            text = self.console_log.read_bytes().decode(errors="replace")
        except OSError:
            return "(no console log)"
        # The console is a pty: lines end in "\r\r\n" (read_text would make that two lines).
        return "\n".join(text.replace("\r", "").splitlines()[-lines:])

    def journal_tail(self, lines: int = CONSOLE_TAIL_LINES) -> str:
        """The end of the host's persistent journal, read from its root (while mounted)."""
        journal = self.root / "var/log/journal"
        if not journal.is_dir():
            return "(no persistent journal)"
        try:
            result = subprocess.run(
                ["journalctl", f"--directory={journal}", "--no-pager", "--quiet",
                 "--output=short-monotonic", f"--lines={lines}"],
                capture_output=True, text=True, timeout=JOURNAL_READ_TIMEOUT, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"(journal unreadable: {error})"
        return (result.stdout or result.stderr).strip() or "(journal empty)"

    def _boot_error(self, reason: str, details: str = "") -> HostBootError:
        return HostBootError(
            f"host {self.name} ({self.os_release.name}, {self.network.address}) {reason}"
            f"{details}\n"
            f"console (nspawn and systemd) tail:\n{self.console_tail()}\n"
            f"journal tail:\n{self.journal_tail()}"
        )

    def ssh(self, command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ssh_command(self.controller, self.ssh_key, self.network.address, command),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def wait_ready(self, timeout: float) -> str:
        """Wait until ssh answers and systemd finished booting; return systemd's state."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._boot_error(f"not ready within {timeout:.1f}s")
            if self.process.poll() is not None:
                raise self._boot_error(f"nspawn exited with {self.process.returncode}")
            try:
                result = self.ssh("systemctl is-system-running --wait", timeout=remaining)
            except subprocess.TimeoutExpired:
                continue
            if result.returncode == SSH_CONNECT_FAILED:
                time.sleep(0.1)
                continue
            state = result.stdout.strip()
            if state not in READY_STATES:
                failed = self.ssh("systemctl --failed --no-legend --plain", timeout=30).stdout
                raise self._boot_error(
                    f"booted into state {state!r} {result.stderr}",
                    f"; failed units:\n{failed.strip() or '(none)'}",
                )
            self.boot_state = state
            return state

    def _container_init(self) -> list[int]:
        """Pids of nspawn's children: the host's systemd, whose death ends the whole host."""
        if self.process is None:
            return []
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []

    def stop(self, timeout: float = 10) -> None:
        """Power the host off (killing it after ``timeout``) and remove every trace of it."""
        self._stopping.set()
        if self.process is not None and self.process.poll() is None:
            # nspawn turns SIGTERM into an orderly poweroff of the host's systemd.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_and_wait(self._container_init())
                self.process.kill()
                self.process.wait()
        stray = processes_mentioning(f"{self.state_dir}/") + processes_in_netns(self.network.path)
        kill_and_wait(stray)
        unmount_all_under(self.state_dir)
        propagate = NSPAWN_PROPAGATE_DIR / self.name
        unmount_all_under(propagate)
        shutil.rmtree(propagate, ignore_errors=True)
        delete_netns(self.network.netns)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        # The kernel dismantles a deleted namespace, and with it the veth pair, asynchronously.
        deadline = time.monotonic() + NETNS_TEARDOWN_TIMEOUT
        while self.controller.has_link(self.network.controller_link) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        left = self.leftovers()
        if left:
            raise RuntimeError(f"host {self.name} left behind: {'; '.join(left)}")

    def leftovers(self) -> list[str]:
        """What of this host still exists on the machine (empty once it is stopped)."""
        found = []
        if self.process is not None and self.process.poll() is None:
            found.append(f"nspawn process {self.process.pid}")
        found += [f"process {pid}" for pid in processes_mentioning(f"{self.state_dir}/")]
        found += [f"process {pid} in netns" for pid in processes_in_netns(self.network.path)]
        found += [f"mount {point}" for point in mounts_under(self.state_dir)]
        if self.network.path.exists():
            found.append(f"netns {self.network.netns}")
        if self.controller.has_link(self.network.controller_link):
            found.append(f"veth {self.network.controller_link}")
        if self.state_dir.exists():
            found.append(f"directory {self.state_dir}")
        if (NSPAWN_PROPAGATE_DIR / self.name).exists():
            found.append(f"directory {NSPAWN_PROPAGATE_DIR / self.name}")
        return found
