"""
Docker with the nvidia runtime: /etc/docker/daemon.json is MERGED, never overwritten.

Every key the user had stays; gpufleet adds `runtimes.nvidia`, sets `default-runtime` and the
inventory's `docker_daemon_config` keys. The file is rewritten only when its parsed content
changes, and docker restarts only then.
"""

from __future__ import annotations

import copy
import io
import json
from typing import Any

from pyinfra import host
from pyinfra.api import (
    FileUploadCommand,
    OperationError,
    QuoteString,
    StringCommand,
    deploy,
    operation,
)

from deploys import apt, systemd
from deploys.settings import DATA_DEFAULTS, GpuSettings, read_settings
from facts import snapshot
from facts.docker import DockerDaemonConfig

DAEMON_JSON_PATH = "/etc/docker/daemon.json"
DOCKER_SERVICE = "docker.service"
NVIDIA_RUNTIME = {"path": "nvidia-container-runtime", "args": []}


def merge_daemon_config(
    current: dict[str, Any], default_runtime: str | None, extra: dict[str, Any]
) -> dict[str, Any]:
    """
    The user's daemon.json with the nvidia runtime registered and gpufleet's keys set.

    An nvidia runtime the user already registered (an absolute path, say) is kept as it is.
    """
    merged = copy.deepcopy(current)
    runtimes = merged.setdefault("runtimes", {})
    runtimes.setdefault("nvidia", copy.deepcopy(NVIDIA_RUNTIME))
    if default_runtime is not None:
        merged["default-runtime"] = default_runtime
    merged.update(copy.deepcopy(extra))
    return merged


def render_daemon_config(config: dict[str, Any]) -> bytes:
    # 4-space indent like `nvidia-ctk runtime configure`, key order kept as the user wrote it.
    return (json.dumps(config, indent=4) + "\n").encode()


def daemon_config_problem(path: str, parse_error: str | None) -> str | None:
    if parse_error is None:
        return None
    return (
        f"{path} does not parse ({parse_error}); gpufleet merges into it and will not guess: "
        f"fix or remove the file, then re-run (it was left untouched)"
    )


@operation()
def daemon_config(
    default_runtime: str | None,
    extra: dict[str, Any],
    path: str = DAEMON_JSON_PATH,
):
    """
    Merge the nvidia runtime and settings into docker's daemon.json.

    + default_runtime: value for `default-runtime`, or None to leave it alone
    + extra: further daemon.json keys (they win over the file's)
    + path: the daemon.json path

    The first rewrite of a user's file keeps a copy beside it (daemon.json.before-gpufleet).
    """
    current = snapshot.current(DockerDaemonConfig, path=path)
    problem = daemon_config_problem(path, current["parse_error"])
    if problem:
        raise OperationError(problem)
    existing = current["config"] or {}
    merged = merge_daemon_config(existing, default_runtime, extra)
    if current["exists"] and merged == existing:
        host.noop(f"{path} already has the nvidia runtime and gpufleet's settings")
        return
    quoted = QuoteString(path)
    yield StringCommand("mkdir", "-p", QuoteString(path.rsplit("/", 1)[0]))
    if current["exists"]:
        yield StringCommand("cp", "-np", quoted, QuoteString(f"{path}.before-gpufleet"))
    yield FileUploadCommand(
        io.BytesIO(render_daemon_config(merged)),
        path,
        remote_temp_filename=host.get_temp_filename(path),
    )


@deploy("Docker with the nvidia runtime", data_defaults=DATA_DEFAULTS)
def docker(settings: GpuSettings | None = None) -> None:
    settings = settings or read_settings(host.data)
    apt.pinned_packages(
        name=f"Docker ({settings.docker_package}) installed",
        packages={settings.docker_package: None},
        hold=False,
    )
    config = daemon_config(
        name=f"nvidia runtime merged into {DAEMON_JSON_PATH}",
        default_runtime=settings.docker_default_runtime,
        extra=settings.docker_daemon_config,
    )
    systemd.service(
        name="Docker enabled and running",
        unit=DOCKER_SERVICE,
        running=True,
        enabled=True,
    )
    systemd.service(
        name="Restart docker for the new daemon.json",
        unit=DOCKER_SERVICE,
        restarted=True,
        _if=config.did_change,
    )
