"""
daemon.json as gpufleet merges it: the user's file with the nvidia runtime registered and the
inventory's keys set, and when the running dockerd must restart for it. Pure functions of the
parsed file and what `docker info` shows; gpufleet.operations.docker_daemon applies them.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpufleet.facts.docker import DockerDaemonConfigInfo, DockerInfoData
    from gpufleet.facts.gpu_users import GpuContainer

DAEMON_JSON_PATH = "/etc/docker/daemon.json"
NVIDIA_RUNTIME = {"path": "nvidia-container-runtime", "args": []}

# A key path into daemon.json, e.g. ("log-opts", "max-size").
KeyPath = tuple[str, ...]


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
