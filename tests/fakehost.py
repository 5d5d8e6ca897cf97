"""
Scripted hosts for pyinfra's @fake connector: each fact command gets the output the same command
prints on a host in the described state, so whole deploys can be planned (`--dry`) without a host.

The outputs are rendered in the formats of the real tools (dpkg-query, sha256sum, systemctl show,
/etc/os-release), with os-release files taken from real hosts (tests/fixtures/os-release), and
each also as its section of GpuHostState's one-round-trip read.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinfra.api import Config, Inventory, State
from pyinfra.api.command import FileUploadCommand
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.connectors.fake import FakeConnector
from pyinfra.context import ctx_host, ctx_state

from gpufleet.deploys.cuda import CUDA_REPO_NAME, environment_files, toolkit_path
from gpufleet.deploys.cudnn import cudnn_packages
from gpufleet.deploys.docker import DAEMON_JSON_PATH, merge_daemon_config, render_daemon_config
from gpufleet.deploys.nvidia_container import CONTAINER_REPO_NAME, container_toolkit_packages
from gpufleet.deploys.nvidia_driver import (
    NOUVEAU_BLACKLIST,
    NOUVEAU_BLACKLIST_PATH,
    PERSISTENCED_BOOT_LINK,
    PERSISTENCED_DROPIN,
    PERSISTENCED_DROPIN_PATH,
    PERSISTENCED_UNIT,
    driver_packages,
)
from gpufleet.facts.docker import DAEMON_JSON_EXISTS_MARKER
from gpufleet.facts.gpu_host import SECTION_MARKER
from gpufleet.operations.packages import KEYRING_DIR, SOURCES_DIR, source_line
from gpufleet.repository_keys import dearmor
from gpufleet.settings import DATA_DEFAULTS
from gpufleet.stack import compat

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_KEY = FIXTURES / "keys" / "fixture-archive-key.asc"
FIXTURE_KEY_FINGERPRINT = "4EB9E934471256AEDAE2AB1FC6607FBBA0D62461"
UBUNTU_2004_KERNEL = "5.4.0-150-generic"

# Inventory data pointing both repositories' keys at the fixture key (NVIDIA's are not reachable).
FIXTURE_KEY_DATA: dict[str, Any] = {
    "nvidia_cuda_repo_key_url": str(FIXTURE_KEY),
    "nvidia_cuda_repo_key_fingerprint": FIXTURE_KEY_FINGERPRINT,
    "nvidia_container_repo_key_url": str(FIXTURE_KEY),
    "nvidia_container_repo_key_fingerprint": FIXTURE_KEY_FINGERPRINT,
}


@dataclass
class FakeHost:
    os_release: str
    kernel_release: str
    # name -> (version, dpkg status such as "hold ok installed")
    packages: dict[str, tuple[str, str]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    # symlink path -> target
    links: dict[str, str] = field(default_factory=dict)
    cuda_default_path: str | None = None
    # unit -> (running, enabled)
    services: dict[str, tuple[bool, bool]] = field(default_factory=dict)
    # `python3 --version` without "Python ", or None without python3
    python3_version: str | None = None

    def dpkg_query_lines(self) -> list[str]:
        return [f"{name}\t{version}\t{status}" for name, (version, status) in self.packages.items()]

    def sha256sum_lines(self) -> list[str]:
        return [f"{hashlib.sha256(data).hexdigest()}  {path}" for path, data in self.files.items()]

    def symlink_lines(self) -> list[str]:
        return [f"link\t{path}\t{target}" for path, target in self.links.items()]

    def daemon_json_lines(self) -> list[str]:
        data = self.files.get(DAEMON_JSON_PATH)
        if data is None:
            return []
        return [DAEMON_JSON_EXISTS_MARKER, *data.decode().splitlines()]

    def cuda_lines(self) -> list[str]:
        return [f"default\t{self.cuda_default_path}"] if self.cuda_default_path else []

    def systemctl_lines(self, state_key: str) -> list[str]:
        lines = []
        for unit, (running, enabled) in self.services.items():
            if state_key == "SubState":
                value = "running" if running else "dead"
            else:
                value = "enabled" if enabled else "disabled"
            lines += [f"Id={unit}", f"{state_key}={value}", ""]
        return lines

    def python3_version_lines(self) -> list[str]:
        return [f"Python {self.python3_version}"] if self.python3_version else []

    def host_state_lines(self) -> list[str]:
        sections = {
            "os_release": self.os_release.splitlines(),
            "kernel_release": [self.kernel_release],
            "cuda": self.cuda_lines(),
            "packages": self.dpkg_query_lines(),
            "held_packages": [n for n, (_, s) in self.packages.items() if s.startswith("hold ")],
            "docker_daemon_config": self.daemon_json_lines(),
            "python3_version": self.python3_version_lines(),
            "file_digests": self.sha256sum_lines(),
            "symlink_targets": self.symlink_lines(),
            "units_running": self.systemctl_lines("SubState"),
            "units_enabled": self.systemctl_lines("UnitFileState"),
        }
        lines = []
        for name, section in sections.items():
            lines += [SECTION_MARKER + name, *section]
        return lines

    def connector_data(self) -> dict[str, Any]:
        """Host data for the @fake connector: scripted outputs, no simulated delays."""
        return {"fake_responses": self.responses(), "fake_delay": 0, "fake_delay_jitter": 0}

    def responses(self) -> dict[Any, Any]:
        """The @fake connector's `fake_responses`: first matching command wins."""
        return {
            SECTION_MARKER: self.host_state_lines(),
            "sha256sum --": self.sha256sum_lines(),
            "dpkg-query -W": self.dpkg_query_lines(),
            DAEMON_JSON_EXISTS_MARKER: self.daemon_json_lines(),
            "/usr/local/cuda-*": self.cuda_lines(),
            'readlink -- "$path"': self.symlink_lines(),
            re.compile(r"systemctl show .*SubState"): self.systemctl_lines("SubState"),
            re.compile(r"systemctl show .*UnitFileState"): self.systemctl_lines("UnitFileState"),
            "python3 --version": self.python3_version_lines(),
        }


def bare_ubuntu_2004() -> FakeHost:
    return FakeHost(
        os_release=(FIXTURES / "os-release" / "ubuntu-20.04.6.txt").read_text(),
        kernel_release=UBUNTU_2004_KERNEL,
        services={"ssh.service": (True, True)},
        python3_version="3.8.10",
    )


def bare_debian_12() -> FakeHost:
    return FakeHost(
        os_release=(FIXTURES / "os-release" / "debian-12.txt").read_text(),
        kernel_release="6.1.0-26-amd64",
        services={"ssh.service": (True, True)},
        python3_version="3.11.2",
    )


def converged_ubuntu_2004(data: dict[str, Any]) -> FakeHost:
    """The host as gpufleet leaves it, for the given inventory data (over the defaults)."""
    settings = {**DATA_DEFAULTS, **data}
    host = bare_ubuntu_2004()
    platform = compat.HostPlatform.from_os_release({"ID": "ubuntu", "VERSION_ID": "20.04"})
    cuda_url = settings["nvidia_cuda_repo_url"] or compat.cuda_repo_url(platform.cuda_repo_release)
    keyring = dearmor(FIXTURE_KEY.read_bytes())
    for repository, url in (
        (CUDA_REPO_NAME, cuda_url),
        (CONTAINER_REPO_NAME, settings["nvidia_container_repo_url"]),
    ):
        keyring_path = f"{KEYRING_DIR}/{repository}.gpg"
        host.files[keyring_path] = keyring
        host.files[f"{SOURCES_DIR}/{repository}.list"] = source_line(url, keyring_path).encode()
    host.files[NOUVEAU_BLACKLIST_PATH] = NOUVEAU_BLACKLIST.encode()
    host.files[PERSISTENCED_DROPIN_PATH] = PERSISTENCED_DROPIN.encode()
    host.links[PERSISTENCED_BOOT_LINK] = PERSISTENCED_UNIT
    for path, text in environment_files(settings["cuda_version"]).items():
        host.files[path] = text.encode()
    host.files[DAEMON_JSON_PATH] = render_daemon_config(
        merge_daemon_config(
            {}, settings["docker_default_runtime"], settings["docker_daemon_config"], []
        ).config
    )
    host.cuda_default_path = toolkit_path(settings["cuda_version"])

    pinned = {
        **driver_packages(settings["nvidia_driver_branch"], settings["nvidia_driver_version"]),
        compat.cuda_package_name(settings["cuda_version"]): settings["cuda_package_version"] + "-*",
        **cudnn_packages(settings["cudnn_version"], settings["cuda_version"]),
        **container_toolkit_packages(settings["nvidia_container_toolkit_version"]),
    }
    for name, pattern in pinned.items():
        assert pattern is not None
        host.packages[name] = (pattern.replace("*", "1"), "hold ok installed")
    host.packages[f"linux-headers-{UBUNTU_2004_KERNEL}"] = ("5.4.0-150.167", "install ok installed")
    # Ubuntu 20.04's docker.io (focal-updates).
    host.packages["docker.io"] = ("24.0.5-0ubuntu1~20.04.1", "install ok installed")
    host.services.update(
        {"nvidia-persistenced.service": (True, True), "docker.service": (True, True)}
    )
    return host


@dataclass
class PlannedOperation:
    name: str
    commands: list[str]
    conditional: bool
    uploads: dict[str, bytes] = field(default_factory=dict)


def prepare(hosts: dict[str, tuple[FakeHost, dict[str, Any]]], deploy_func: Any) -> State:
    """
    Add a @deploy for @fake hosts through pyinfra's API, with change detection (each operation
    checks the host, as in `pyinfra --dry`), and return the state, ready for ``run_ops``.
    """
    inventory = Inventory(
        (
            [
                (f"@fake/{name}", {**data, **host.connector_data()})
                for name, (host, data) in hosts.items()
            ],
            {},
        )
    )
    state = State(inventory, Config())
    connect_all(state)
    add_deploy(state, deploy_func)
    return state


def sent_commands(state: State) -> dict[str, list[str]]:
    """Per @fake host, every command pyinfra sent it so far (fact reads and operations)."""
    sent = {}
    for host in state.inventory:
        assert isinstance(host.connector, FakeConnector)
        sent[host.name.removeprefix("@fake/")] = list(host.connector.executed_commands)
    return sent


def plan(
    hosts: dict[str, tuple[FakeHost, dict[str, Any]]], deploy_func: Any
) -> dict[str, list[PlannedOperation]]:
    """
    Run a @deploy against @fake hosts through pyinfra's API and return, per host, each operation
    that would change something with the commands it would run. Operations guarded by `_if`
    (handlers) are listed as conditional, without running their triggers.
    """
    return planned_operations(prepare(hosts, deploy_func))


def planned_operations(state: State) -> dict[str, list[PlannedOperation]]:
    """What ``plan`` returns, for a ``prepare``d state."""
    planned: dict[str, list[PlannedOperation]] = {}
    for host in state.inventory:
        operations = []
        for op_hash in state.get_op_order():
            if op_hash not in state.ops[host]:
                continue
            op_data = state.get_op_data_for_host(host, op_hash)
            name = ", ".join(state.get_op_meta(op_hash).names)
            if op_data.global_arguments.get("_if"):
                operations.append(PlannedOperation(name, [], conditional=True))
                continue
            with ctx_state.use(state), ctx_host.use(host):
                generated = list(op_data.command_generator())
            if not generated:
                continue
            planned_op = PlannedOperation(name, [], conditional=False)
            for command in generated:
                if isinstance(command, FileUploadCommand):
                    planned_op.commands.append(f"upload {command.dest}")
                    assert isinstance(command.src, io.BytesIO)  # gpufleet uploads from memory
                    planned_op.uploads[command.dest] = command.src.getvalue()
                else:
                    planned_op.commands.append(str(command))
            operations.append(planned_op)
        planned[host.name.removeprefix("@fake/")] = operations
    return planned
