"""
The docker daemon operations (daemon_config, restart_for_config) in pyinfra's operation fixture
style: each case gives the operation's arguments, the facts it reads and exactly the commands
it yields.
"""

from __future__ import annotations

from typing import Any

import pytest
from pyinfra.api import OperationError
from pyinfra.api.operation import OperationMeta

from gpufleet.operations.docker_daemon import daemon_config, restart_for_config
from tests.fakehost import OperationCase, operation_commands

VALIDATE_NEW = (
    "if dockerd --help 2>&1 | grep -q -- --validate; then dockerd --validate --config-file "
    "/etc/docker/daemon.json.gpufleet-new || { rm -f /etc/docker/daemon.json.gpufleet-new; "
    "exit 1; }; fi"
)
# The record of gpufleet's keys and a user's daemon.json rewritten, keeping the original.
REWRITE_EXISTING_FILE = [
    "mkdir -p /var/lib/gpufleet",
    "upload /var/lib/gpufleet/daemon-json-keys.json",
    "mkdir -p /etc/docker",
    "upload /etc/docker/daemon.json.gpufleet-new",
    VALIDATE_NEW,
    "cp -np /etc/docker/daemon.json /etc/docker/daemon.json.before-gpufleet && "
    "cp -p /etc/docker/daemon.json /etc/docker/daemon.json.gpufleet-previous",
    "mv -f /etc/docker/daemon.json.gpufleet-new /etc/docker/daemon.json",
]
NO_FILE: dict[str, Any] = {"exists": False, "config": None, "parse_error": None, "managed_keys": []}
CONVERGED_CONFIG = {
    "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}},
    "default-runtime": "nvidia",
}


def existing(config: dict[str, Any], managed_keys: list[tuple[str, ...]] | None = None) -> Any:
    """DockerDaemonConfig's value for a daemon.json that parses."""
    return {
        "exists": True,
        "config": config,
        "parse_error": None,
        "managed_keys": managed_keys or [],
    }


DAEMON_CONFIG_CASES = [
    OperationCase(
        id="no-file",
        args={"default_runtime": "nvidia", "extra": {"default-shm-size": "1G"}},
        facts={"DockerDaemonConfig": NO_FILE},
        commands=[
            "mkdir -p /var/lib/gpufleet",
            "upload /var/lib/gpufleet/daemon-json-keys.json",
            "mkdir -p /etc/docker",
            "upload /etc/docker/daemon.json.gpufleet-new",
            VALIDATE_NEW,
            ": > /etc/docker/daemon.json.gpufleet-previous",
            "mv -f /etc/docker/daemon.json.gpufleet-new /etc/docker/daemon.json",
        ],
        uploads={
            "/var/lib/gpufleet/daemon-json-keys.json": b'[["default-shm-size"]]\n',
            "/etc/docker/daemon.json.gpufleet-new": b"""\
{
    "runtimes": {
        "nvidia": {
            "path": "nvidia-container-runtime",
            "args": []
        }
    },
    "default-runtime": "nvidia",
    "default-shm-size": "1G"
}
""",
        },
    ),
    OperationCase(
        id="users-keys-kept-and-objects-merged",
        args={"default_runtime": "nvidia", "extra": {"log-opts": {"max-file": "3"}}},
        facts={
            "DockerDaemonConfig": existing(
                {"log-opts": {"max-size": "10m"}, "runtimes": {"crun": {"path": "/usr/bin/crun"}}}
            )
        },
        commands=REWRITE_EXISTING_FILE,
        uploads={
            "/var/lib/gpufleet/daemon-json-keys.json": b'[["log-opts", "max-file"]]\n',
            "/etc/docker/daemon.json.gpufleet-new": b"""\
{
    "log-opts": {
        "max-size": "10m",
        "max-file": "3"
    },
    "runtimes": {
        "crun": {
            "path": "/usr/bin/crun"
        },
        "nvidia": {
            "path": "nvidia-container-runtime",
            "args": []
        }
    },
    "default-runtime": "nvidia"
}
""",
        },
    ),
    OperationCase(
        id="converged-changes-nothing",
        args={"default_runtime": "nvidia", "extra": {}},
        facts={"DockerDaemonConfig": existing(CONVERGED_CONFIG)},
        commands=[],
    ),
    OperationCase(
        # A user's own nvidia runtime (another path, no args) is theirs: kept as it is.
        id="users-nvidia-runtime-kept",
        args={"default_runtime": "nvidia", "extra": {}},
        facts={
            "DockerDaemonConfig": existing(
                {
                    "runtimes": {"nvidia": {"path": "/opt/nvidia/bin/nvidia-container-runtime"}},
                    "default-runtime": "nvidia",
                }
            )
        },
        commands=[],
    ),
    OperationCase(
        # default-shm-size was gpufleet's (its record says so) and the inventory dropped it.
        id="dropped-key-of-gpufleets-leaves",
        args={"default_runtime": "nvidia", "extra": {}},
        facts={
            "DockerDaemonConfig": existing(
                {**CONVERGED_CONFIG, "default-shm-size": "1G"}, [("default-shm-size",)]
            )
        },
        commands=REWRITE_EXISTING_FILE,
        uploads={
            "/var/lib/gpufleet/daemon-json-keys.json": b"[]\n",
            "/etc/docker/daemon.json.gpufleet-new": b"""\
{
    "runtimes": {
        "nvidia": {
            "path": "nvidia-container-runtime",
            "args": []
        }
    },
    "default-runtime": "nvidia"
}
""",
        },
    ),
]

RUNNING_AS_CONFIGURED = {
    "server_version": "24.0.5",
    "runtimes": {"runc": {"path": "runc"}, "nvidia": {"path": "nvidia-container-runtime"}},
    "default_runtime": "nvidia",
    "containers_running": 0,
    "live_restore": False,
}


def restart_docker(reason: str) -> str:
    """The restart command, with the reason it prints when docker does not come back."""
    return (
        "systemctl reset-failed docker.service; if systemctl restart docker.service; then "
        "rm -f /etc/docker/daemon.json.gpufleet-previous; else "
        f"echo {reason} >&2; journalctl -u docker.service -n 20 --no-pager -o cat >&2; "
        "if [ -f /etc/docker/daemon.json.gpufleet-previous ]; then "
        "mv -f /etc/docker/daemon.json.gpufleet-previous /etc/docker/daemon.json; "
        "systemctl reset-failed docker.service; systemctl restart docker.service && "
        "echo 'the previous daemon.json was restored and docker runs with it' >&2; fi; "
        "exit 1; fi"
    )


RESTART_FOR_CONFIG_CASES = [
    OperationCase(
        id="file-rewritten",
        args={"written": OperationMeta("daemon_config", is_change=True)},
        facts={},
        commands=[restart_docker("'docker did not start (daemon.json was rewritten); its log:'")],
    ),
    OperationCase(
        id="running-as-configured",
        args={"written": OperationMeta("daemon_config", is_change=False)},
        facts={
            "DockerDaemonConfig": existing(CONVERGED_CONFIG),
            "DockerInfo": RUNNING_AS_CONFIGURED,
        },
        commands=[],
    ),
    OperationCase(
        # A run killed between writing the file and the restart.
        id="running-without-the-files-runtime",
        args={"written": OperationMeta("daemon_config", is_change=False)},
        facts={
            "DockerDaemonConfig": existing(CONVERGED_CONFIG),
            "DockerInfo": {**RUNNING_AS_CONFIGURED, "runtimes": {"runc": {"path": "runc"}}},
        },
        commands=[
            restart_docker(
                "'docker did not start (the running docker has no '\"'\"'nvidia'\"'\"' runtime);"
                " its log:'"
            )
        ],
    ),
]


@pytest.mark.parametrize("case", DAEMON_CONFIG_CASES, ids=lambda case: case.id)
def test_daemon_config(case: OperationCase) -> None:
    planned = operation_commands(daemon_config, case.args, case.facts)
    assert (planned.commands, planned.uploads) == (case.commands, case.uploads)


def test_daemon_config_that_does_not_parse_is_left_untouched() -> None:
    unreadable = {**NO_FILE, "exists": True, "parse_error": "line 1 column 28"}
    with pytest.raises(OperationError, match=r"\(line 1 column 28\).*it was left untouched"):
        operation_commands(
            daemon_config,
            {"default_runtime": "nvidia", "extra": {}},
            {"DockerDaemonConfig": unreadable},
        )


@pytest.mark.parametrize("case", RESTART_FOR_CONFIG_CASES, ids=lambda case: case.id)
def test_restart_for_config(case: OperationCase) -> None:
    planned = operation_commands(restart_for_config, case.args, case.facts)
    assert (planned.commands, planned.uploads) == (case.commands, case.uploads)
