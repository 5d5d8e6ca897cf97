"""
Docker with the nvidia runtime: /etc/docker/daemon.json is MERGED, never overwritten.

Every key the user had stays; gpufleet adds `runtimes.nvidia`, sets `default-runtime` and the
inventory's `docker_daemon_config` keys (and takes back only those of them it set before). The
file is rewritten only when its parsed content changes; docker restarts when it was rewritten or
when the running daemon differs from it, and never under running containers unless allowed.
"""

from __future__ import annotations

import copy
import io
import json
import posixpath
import shlex
from dataclasses import dataclass
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
from pyinfra.api.operation import OperationMeta

from gpufleet.facts import snapshot
from gpufleet.facts.docker import (
    MANAGED_KEYS_PATH,
    DockerDaemonConfig,
    DockerDaemonConfigInfo,
    DockerInfo,
    DockerInfoData,
    KeyPath,
)
from gpufleet.facts.gpu_users import GpuContainer
from gpufleet.operations import packages as apt
from gpufleet.operations import units as systemd

DAEMON_JSON_PATH = "/etc/docker/daemon.json"
DOCKER_SERVICE = "docker.service"
NVIDIA_RUNTIME = {"path": "nvidia-container-runtime", "args": []}


def key_paths(config: dict[str, Any], prefix: KeyPath = ()) -> list[KeyPath]:
    """The leaf key paths of nested daemon.json settings, e.g. ("log-opts", "max-size")."""
    paths: list[KeyPath] = []
    for key, value in config.items():
        if isinstance(value, dict) and value:
            paths += key_paths(value, (*prefix, key))
        else:
            paths.append((*prefix, key))
    return paths


def _remove_key(config: dict[str, Any], path: KeyPath) -> None:
    """Delete the key at ``path``, and the objects that its removal leaves empty."""
    parents: list[tuple[dict[str, Any], str]] = []
    parent = config
    for key in path[:-1]:
        child = parent.get(key)
        if not isinstance(child, dict):
            return
        parents.append((parent, key))
        parent = child
    parent.pop(path[-1], None)
    for container, key in reversed(parents):
        if container[key]:
            break
        del container[key]


def _merge_into(config: dict[str, Any], extra: dict[str, Any]) -> None:
    """Set ``extra``'s values, merging where both sides nest objects (runtimes, log-opts)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            _merge_into(config[key], value)
        else:
            config[key] = copy.deepcopy(value)


@dataclass(frozen=True)
class DaemonConfig:
    """daemon.json as gpufleet wants it, and the key paths of it that are gpufleet's."""

    config: dict[str, Any]
    managed_keys: list[KeyPath]


def merge_daemon_config(
    current: dict[str, Any],
    default_runtime: str | None,
    extra: dict[str, Any],
    previously_managed: list[KeyPath],
) -> DaemonConfig:
    """
    The user's daemon.json with the nvidia runtime registered and gpufleet's keys set.

    An nvidia runtime the user already registered (an absolute path, say) is kept as it is.
    Keys that gpufleet set from ``docker_daemon_config`` before and that are no longer there
    (``previously_managed``) are removed; no other key of the user's is.
    """
    merged = copy.deepcopy(current)
    managed = key_paths(extra)
    for path in previously_managed:
        if path not in managed:
            _remove_key(merged, path)
    merged.setdefault("runtimes", {}).setdefault("nvidia", copy.deepcopy(NVIDIA_RUNTIME))
    if default_runtime is not None:
        merged["default-runtime"] = default_runtime
    _merge_into(merged, extra)
    return DaemonConfig(merged, managed)


def render_daemon_config(config: dict[str, Any]) -> bytes:
    # 4-space indent like `nvidia-ctk runtime configure`, key order kept as the user wrote it.
    return (json.dumps(config, indent=4) + "\n").encode()


def render_managed_keys(managed_keys: list[KeyPath]) -> bytes:
    return (json.dumps([list(path) for path in managed_keys]) + "\n").encode()


def daemon_config_problem(path: str, parse_error: str | None) -> str | None:
    if parse_error is None:
        return None
    return (
        f"{path} cannot be read as dockerd reads it ({parse_error}); gpufleet merges into it "
        "and will not guess: fix or remove the file, then re-run (it was left untouched)"
    )


def running_daemon_difference(config: dict[str, Any], info: DockerInfoData | None) -> str | None:
    """
    How the running dockerd differs from ``config`` in what `docker info` shows (runtimes,
    default runtime, live-restore), or None: a restart that a killed run never did shows here.
    """
    if info is None:
        return None
    for name, runtime in sorted(config.get("runtimes", {}).items()):
        running = info["runtimes"].get(name)
        if running is None:
            return f"the running docker has no {name!r} runtime"
        if runtime.get("path") != running.get("path"):
            return f"the running docker's {name!r} runtime is {running.get('path')!r}"
    wanted_default = config.get("default-runtime")
    if wanted_default is not None and wanted_default != info["default_runtime"]:
        return f"the running docker's default runtime is {info['default_runtime']!r}"
    if bool(config.get("live-restore", False)) != info["live_restore"]:
        return "the running docker's live-restore differs from daemon.json"
    return None


def restart_refusal(
    restart_reason: str | None,
    info: DockerInfoData | None,
    containers: list[GpuContainer],
    allowed: bool,
) -> str | None:
    """
    Why docker may not restart for its new daemon.json: a restart stops every running
    container (GPU training jobs too), unless live-restore keeps them running.
    """
    if restart_reason is None or info is None or info["live_restore"] or allowed:
        return None
    if not containers and not info["containers_running"]:
        return None
    running = ", ".join(f"{c['name']} ({c['image']})" for c in containers)
    return (
        f"docker must restart ({restart_reason}), which would stop the "
        f"{info['containers_running']} running container(s): {running or 'see docker ps'}; "
        "re-run when they have ended, or turn on live-restore in daemon.json, or set "
        "docker_restart_with_running_containers: true to stop them"
    )


def restart_reason(
    daemon: DockerDaemonConfigInfo, wanted: DaemonConfig, info: DockerInfoData | None
) -> str | None:
    """Why this run would restart the running docker (None: it would not)."""
    if info is None:
        return None
    if not daemon["exists"] or wanted.config != daemon["config"]:
        return "daemon.json changes"
    return running_daemon_difference(wanted.config, info)


@operation()
def daemon_config(
    default_runtime: str | None,
    extra: dict[str, Any],
    path: str = DAEMON_JSON_PATH,
    managed_keys_path: str = MANAGED_KEYS_PATH,
):
    """
    Merge the nvidia runtime and settings into docker's daemon.json.

    + default_runtime: value for `default-runtime`, or None to leave it alone
    + extra: further daemon.json keys (they win over the file's; objects are merged)
    + path: the daemon.json path
    + managed_keys_path: where gpufleet records which keys of the file are its own

    The first rewrite of a user's file keeps a copy beside it (daemon.json.before-gpufleet);
    each rewrite keeps the file it replaces as daemon.json.gpufleet-previous until docker has
    restarted with the new one. Where the installed dockerd has `--validate`, it checks the new
    file before it replaces the old.
    """
    current = snapshot.current(DockerDaemonConfig, path=path, managed_keys_path=managed_keys_path)
    problem = daemon_config_problem(path, current["parse_error"])
    if problem:
        raise OperationError(problem)
    wanted = merge_daemon_config(
        current["config"] or {}, default_runtime, extra, current["managed_keys"]
    )
    if wanted.managed_keys != current["managed_keys"]:
        yield StringCommand("mkdir", "-p", QuoteString(posixpath.dirname(managed_keys_path)))
        yield FileUploadCommand(
            io.BytesIO(render_managed_keys(wanted.managed_keys)),
            managed_keys_path,
            remote_temp_filename=host.get_temp_filename(managed_keys_path),
        )
    if current["exists"] and wanted.config == current["config"]:
        host.noop(f"{path} already has the nvidia runtime and gpufleet's settings")
        return
    new_path, previous_path = f"{path}.gpufleet-new", f"{path}.gpufleet-previous"
    quoted, new, previous = (shlex.quote(p) for p in (path, new_path, previous_path))
    backup = shlex.quote(f"{path}.before-gpufleet")
    yield StringCommand("mkdir", "-p", QuoteString(posixpath.dirname(path)))
    yield FileUploadCommand(
        io.BytesIO(render_daemon_config(wanted.config)),
        new_path,
        remote_temp_filename=host.get_temp_filename(path),
    )
    yield (
        "if dockerd --help 2>&1 | grep -q -- --validate; then "
        f"dockerd --validate --config-file {new} || {{ rm -f {new}; exit 1; }}; fi"
    )
    if current["exists"]:
        yield f"cp -np {quoted} {backup} && cp -p {quoted} {previous}"
    else:
        # No file was like an empty one: restoring that after a failed restart is the same.
        yield f": > {previous}"
    yield f"mv -f {new} {quoted}"


@operation()
def restart_for_config(
    written: OperationMeta, path: str = DAEMON_JSON_PATH, unit: str = DOCKER_SERVICE
):
    """
    Restart docker when daemon.json was rewritten, or when the running daemon differs from the
    file (a run killed between the write and the restart): compared, not remembered.

    + written: the daemon_config operation of this run
    + path: the daemon.json path
    + unit: docker's systemd unit

    If docker does not come back, the file it replaced is restored and docker restarted with it,
    and the host fails with docker's own error.
    """
    rewritten = written.did_change() if written.is_complete() else written.will_change
    reason = "daemon.json was rewritten" if rewritten else None
    if reason is None:
        current = snapshot.current(DockerDaemonConfig, path=path)
        reason = running_daemon_difference(current["config"] or {}, snapshot.current(DockerInfo))
    if reason is None:
        host.noop("docker runs with its daemon.json")
        return
    quoted, previous, quoted_unit = (
        shlex.quote(path),
        shlex.quote(f"{path}.gpufleet-previous"),
        shlex.quote(unit),
    )
    yield (
        # reset-failed: quick restarts must not hit the unit's start rate limit.
        f"systemctl reset-failed {quoted_unit}; "
        f"if systemctl restart {quoted_unit}; then rm -f {previous}; else "
        f"echo {shlex.quote(f'docker did not start ({reason}); its log:')} >&2; "
        f"journalctl -u {quoted_unit} -n 20 --no-pager -o cat >&2; "
        f"if [ -f {previous} ]; then mv -f {previous} {quoted}; "
        f"systemctl reset-failed {quoted_unit}; systemctl restart {quoted_unit} && "
        "echo 'the previous daemon.json was restored and docker runs with it' >&2; fi; "
        "exit 1; fi"
    )


@deploy("Docker with the nvidia runtime")
def docker(
    docker_package: str,
    default_runtime: str | None,
    daemon_settings: dict[str, Any],
    lock_timeout: int,
) -> None:
    apt.pinned_packages(
        name=f"Docker ({docker_package}) installed",
        packages={docker_package: None},
        lock_timeout=lock_timeout,
        hold=False,
    )
    config = daemon_config(
        name=f"nvidia runtime merged into {DAEMON_JSON_PATH}",
        default_runtime=default_runtime,
        extra=daemon_settings,
    )
    systemd.service(
        name="Docker enabled and running",
        unit=DOCKER_SERVICE,
        running=True,
        enabled=True,
    )
    restart_for_config(name="docker runs with its daemon.json", written=config)
