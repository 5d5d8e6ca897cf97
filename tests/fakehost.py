"""
Scripted hosts for pyinfra's @fake connector: each fact command gets the output the same command
prints on a host in the described state, so whole deploys can be planned (`--dry`) and run
without a host; and single operations planned on hand-written facts (``operation_commands``).

The outputs are rendered in the formats of the real tools (dpkg-query, sha256sum, systemctl show,
/etc/os-release), with os-release files taken from real hosts (tests/fixtures/os-release), and
each also as its section of GpuHostState's one-round-trip read.
"""

from __future__ import annotations

import hashlib
import io
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest.mock import patch

from pyinfra.api import Config, Host, Inventory, State
from pyinfra.api.command import FileUploadCommand
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.api.state import StateOperationHostData
from pyinfra.connectors.fake import FakeConnector
from pyinfra.context import ctx_host, ctx_state

from gpufleet.facts.docker import DAEMON_JSON_EXISTS_MARKER
from gpufleet.facts.gpu_host import SECTION_MARKER
from tests.testinfra import correct_host

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_KEY = FIXTURES / "keys" / "fixture-archive-key.asc"
# The same key as apt reads it from /etc/apt/keyrings (made by `gpg --dearmor`).
FIXTURE_KEYRING = FIXTURES / "keys" / "fixture-archive-key.gpg"
FIXTURE_KEY_FINGERPRINT = "4EB9E934471256AEDAE2AB1FC6607FBBA0D62461"
# Where @fake hosts' verification results go unless a test names a folder: not the checkout
# (removed when the test process exits).
FAKE_RESULTS = tempfile.TemporaryDirectory(prefix="gpufleet-fake-results-")
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
    # `apt-cache madison` lines for the packages apt's lists offer (none: apt has no lists of
    # the repositories gpufleet adds)
    madison: list[str] = field(default_factory=list)
    # What `docker image inspect` says of tensorflow_image (None: docker does not have it)
    tensorflow_image_id: str | None = None
    # `lspci -n -D -d 10de:` lines: the NVIDIA devices on the bus
    pci_lines: list[str] = field(default_factory=list)

    def dpkg_query_lines(self) -> list[str]:
        return [f"{name}\t{version}\t{status}" for name, (version, status) in self.packages.items()]

    def sha256sum_lines(self) -> list[str]:
        return [f"{hashlib.sha256(data).hexdigest()}  {path}" for path, data in self.files.items()]

    def symlink_lines(self) -> list[str]:
        return [f"link\t{path}\t{target}" for path, target in self.links.items()]

    def daemon_json_lines(self) -> list[str]:
        data = self.files.get(correct_host.DAEMON_JSON_PATH)
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
            "pci_devices": self.pci_lines,
            "cuda": self.cuda_lines(),
            "packages": self.dpkg_query_lines(),
            "held_packages": [n for n, (_, s) in self.packages.items() if s.startswith("hold ")],
            "apt_offers": self.madison,
            "docker_daemon_config": self.daemon_json_lines(),
            "python3_version": self.python3_version_lines(),
            "tensorflow_image_id": [self.tensorflow_image_id] if self.tensorflow_image_id else [],
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
            "cat /etc/os-release": self.os_release.splitlines(),
            "apt-cache madison": self.madison,
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


# daemon.json as gpufleet writes it on a host without one, with the default inventory data.
CONVERGED_DAEMON_JSON = b"""\
{
    "runtimes": {
        "nvidia": {
            "path": "nvidia-container-runtime",
            "args": []
        }
    },
    "default-runtime": "nvidia"
}
"""


def converged_ubuntu_2004() -> FakeHost:
    """
    The Ubuntu 20.04 host as gpufleet leaves it with FIXTURE_KEY_DATA over the defaults: the
    specification (tests/testinfra/correct_host.py), with a package version for each pin.
    """
    host = bare_ubuntu_2004()
    keyring = FIXTURE_KEYRING.read_bytes()
    urls = {
        "cuda": correct_host.CUDA_REPO_URL,
        "nvidia-container-toolkit": correct_host.CONTAINER_REPO_URL,
    }
    for repository, (keyring_path, sources_path) in correct_host.REPOSITORIES.items():
        host.files[keyring_path] = keyring
        host.files[sources_path] = correct_host.source_line(repository, urls[repository]).encode()
    for path, text in correct_host.MANAGED_FILES.items():
        host.files[path] = text.encode()
    host.links.update(correct_host.LINKS)
    host.cuda_default_path = correct_host.CUDA_TOOLKIT_PATH
    host.files[correct_host.DAEMON_JSON_PATH] = CONVERGED_DAEMON_JSON
    for name, pattern in correct_host.PINNED_PACKAGES.items():
        # The repository's Debian revision 1 of each pinned version.
        host.packages[name] = (pattern.replace("*", "1"), "hold ok installed")
    host.packages[f"linux-headers-{UBUNTU_2004_KERNEL}"] = ("5.4.0-150.167", "install ok installed")
    # Ubuntu 20.04's docker.io (focal-updates).
    host.packages["docker.io"] = ("24.0.5-0ubuntu1~20.04.1", "install ok installed")
    host.services.update(
        {"nvidia-persistenced.service": (True, True), "docker.service": (True, True)}
    )
    # gpu_host pulled tensorflow_image for its verification.
    host.tensorflow_image_id = "sha256:" + "0" * 64
    return host


@dataclass
class PlannedOperation:
    name: str
    commands: list[str]
    uploads: dict[str, bytes] = field(default_factory=dict)


def prepare(hosts: dict[str, tuple[FakeHost, dict[str, Any]]], deploy_func: Any) -> State:
    """
    Add a @deploy for @fake hosts through pyinfra's API, with change detection (each operation
    checks the host, as in `pyinfra --dry`), and return the state, ready for ``run_ops``.
    """
    inventory = Inventory(
        (
            [
                (
                    f"@fake/{name}",
                    {"gpu_results_dir": FAKE_RESULTS.name, **data, **host.connector_data()},
                )
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
    that would change something with the commands it would run.
    """
    return planned_operations(prepare(hosts, deploy_func))


def generated_commands(state: State, host: Host, op_hash: str) -> PlannedOperation:
    """The operation's commands on ``host`` as planned (a handler's whatever its ``_if``)."""
    name = ", ".join(state.get_op_meta(op_hash).names)
    planned = PlannedOperation(name, [])
    with ctx_state.use(state), ctx_host.use(host):
        for command in state.get_op_data_for_host(host, op_hash).command_generator():
            if isinstance(command, FileUploadCommand):
                planned.commands.append(f"upload {command.dest}")
                # gpufleet uploads small files from memory, artifacts from the controller's cache.
                if isinstance(command.src, io.BytesIO):
                    planned.uploads[command.dest] = command.src.getvalue()
                else:
                    assert isinstance(command.src, str)
                    planned.uploads[command.dest] = Path(command.src).read_bytes()
            else:
                planned.commands.append(str(command))
    return planned


def planned_operations(state: State) -> dict[str, list[PlannedOperation]]:
    """
    What ``plan`` returns, for a ``prepare``d state: each operation with the commands it yields
    when planned (as `pyinfra --dry` lists them). Handlers (`_if`) are evaluated as pyinfra
    evaluates them, after their triggers ran: the state is run on the @fake hosts (which keep
    answering as in their described state), and a handler is listed where it ran its commands.
    A host that fails in that run (verification of a host described without a GPU) keeps its
    planned operations, without the handlers the run did not reach.
    """
    generated = {
        host: {
            op_hash: generated_commands(state, host, op_hash)
            for op_hash in state.get_op_order()
            if op_hash in state.ops[host]
        }
        for host in state.inventory
    }
    try:
        run_ops(state)
    except PyinfraError:
        if state.failed_hosts != set(state.inventory):
            raise
    planned: dict[str, list[PlannedOperation]] = {}
    for host, operations in generated.items():
        planned[host.name.removeprefix("@fake/")] = [
            operation
            for op_hash, operation in operations.items()
            if operation.commands and handler_ran(state.get_op_data_for_host(host, op_hash))
        ]
    return planned


def handler_ran(op_data: StateOperationHostData) -> bool:
    """Whether the operation, if it is a handler (``_if``), ran its commands."""
    if not op_data.global_arguments.get("_if"):
        return True
    meta = op_data.operation_meta
    return meta.is_complete() and meta.did_change()


@dataclass(frozen=True)
class OperationCase:
    """
    One operation case in pyinfra's fixture style (its tests/operations/*/*.json): the
    operation's arguments, the facts it reads (fact class name -> value), and exactly the
    commands it yields ("upload <path>" for a file, whose contents are in ``uploads``).
    """

    id: str
    args: dict[str, Any]
    facts: dict[str, Any]
    commands: list[str]
    uploads: dict[str, bytes] = field(default_factory=dict)


def fake_host_commands(
    add: Callable[[State], Any], facts: dict[str, Any]
) -> list[PlannedOperation]:
    """
    What the operations ``add(state)`` adds yield on a @fake host whose facts are ``facts``,
    planned through pyinfra's API. Reading a fact the case does not give fails, but for
    pyinfra's TmpDir (an upload's temporary name), which is left to pyinfra's default.
    """
    facts = {"TmpDir": "", **facts}
    state = State(Inventory((["@fake/host"], {})), Config())
    connect_all(state)
    (fake_host,) = state.inventory

    def given_fact(fact: type, *fact_args: Any, **fact_kwargs: Any) -> Any:
        assert fact.__name__ in facts, f"the operation read {fact.__name__}{fact_kwargs}"
        return facts[fact.__name__]

    with patch.object(fake_host, "get_fact", given_fact):
        add(state)
        return [generated_commands(state, fake_host, op_hash) for op_hash in state.get_op_order()]


def operation_commands(
    operation: Any, args: dict[str, Any], facts: dict[str, Any]
) -> PlannedOperation:
    """What ``operation`` yields for ``args`` on a @fake host whose facts are ``facts``."""
    return fake_host_commands(lambda state: add_op(state, operation, **args), facts)[-1]
