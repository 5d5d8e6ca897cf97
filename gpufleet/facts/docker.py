"""
Facts about Docker: the daemon.json file and what the running daemon reports.
"""

from __future__ import annotations

import json
import shlex
from typing import Any, TypedDict

from pyinfra.api import FactBase

from gpufleet.stack.daemon_json import KeyPath

# First output line when the file exists, so an empty file differs from an absent one.
DAEMON_JSON_EXISTS_MARKER = "@@gpufleet:daemon-json-exists"
DAEMON_JSON_DIRECTORY_MARKER = "@@gpufleet:daemon-json-is-a-directory"
# Then the record of the keys gpufleet set, after this marker (when the record exists).
MANAGED_KEYS_MARKER = "@@gpufleet:daemon-json-managed-keys"
MANAGED_KEYS_PATH = "/var/lib/gpufleet/daemon-json-keys.json"


class DockerDaemonConfigInfo(TypedDict):
    exists: bool
    config: dict[str, Any] | None
    parse_error: str | None
    # The key paths gpufleet set in the file (its record), so it can take back only those.
    managed_keys: list[KeyPath]


class DockerInfoData(TypedDict):
    server_version: str
    runtimes: dict[str, dict[str, Any]]
    default_runtime: str
    containers_running: int
    live_restore: bool


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def parse_daemon_json(text: str) -> dict[str, Any]:
    """
    The daemon.json object, parsed no more leniently than dockerd (Go's encoding/json): no NaN
    or Infinity, and no UTF-8 byte order mark, which dockerd accepts only from 23.0 (moby
    pull request 44770) while Debian 11 and 12 ship 20.10. A file holding only whitespace is an
    empty configuration (moby daemon/config/config.go, getConflictFreeConfiguration: "early
    return on empty config"). Raises ValueError with what dockerd would refuse.
    """
    if text.startswith("\ufeff"):
        raise ValueError(
            "it starts with a UTF-8 byte order mark, which dockerd before 23.0 cannot read; "
            "save it as UTF-8 without one"
        )
    if not text.strip():
        return {}
    try:
        config = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise ValueError(f"line {error.lineno} column {error.colno}: {error.msg}") from error
    if not isinstance(config, dict):
        raise ValueError(f"expected a JSON object, got {type(config).__name__}")
    runtimes = config.get("runtimes", {})
    if not isinstance(runtimes, dict) or not all(isinstance(r, dict) for r in runtimes.values()):
        raise ValueError('"runtimes" must be an object of runtime objects, e.g. {"crun": {...}}')
    return config


def _managed_keys(lines: list[str]) -> list[KeyPath]:
    try:
        record = json.loads("\n".join(lines))
    except json.JSONDecodeError:
        return []
    if not isinstance(record, list):
        return []
    return [
        tuple(path)
        for path in record
        if isinstance(path, list) and path and all(isinstance(key, str) for key in path)
    ]


def parse_daemon_json_output(output: list[str]) -> DockerDaemonConfigInfo:
    content, _, record = "\n".join(output).partition(MANAGED_KEYS_MARKER)
    lines = content.split("\n") if content else []
    info: DockerDaemonConfigInfo = {
        "exists": False,
        "config": None,
        "parse_error": None,
        "managed_keys": _managed_keys(record.strip("\n").split("\n")),
    }
    if lines[:1] == [DAEMON_JSON_DIRECTORY_MARKER]:
        return {**info, "exists": True, "parse_error": "it is a directory, not a file"}
    if lines[:1] != [DAEMON_JSON_EXISTS_MARKER]:
        return info
    try:
        config = parse_daemon_json("\n".join(lines[1:]))
    except ValueError as error:
        return {**info, "exists": True, "parse_error": str(error)}
    return {**info, "exists": True, "config": config}


class DockerDaemonConfig(FactBase[DockerDaemonConfigInfo]):
    """
    Returns whether daemon.json exists and its parsed content, or why dockerd would not start
    with it (the JSON error with line and column, a byte order mark, a directory), and the key
    paths gpufleet recorded as its own.
    """

    @staticmethod
    def default() -> DockerDaemonConfigInfo:
        return parse_daemon_json_output([])

    def command(
        self, path: str = "/etc/docker/daemon.json", managed_keys_path: str = MANAGED_KEYS_PATH
    ) -> str:
        quoted, record = shlex.quote(path), shlex.quote(managed_keys_path)
        return (
            f"if [ -d {quoted} ]; then echo {DAEMON_JSON_DIRECTORY_MARKER}; "
            f"elif [ -f {quoted} ]; then echo {DAEMON_JSON_EXISTS_MARKER}; cat {quoted}; fi; "
            f"if [ -f {record} ]; then echo; echo {MANAGED_KEYS_MARKER}; cat {record}; fi; true"
        )

    def process(self, output: list[str]) -> DockerDaemonConfigInfo:
        return parse_daemon_json_output(output)


def parse_docker_info_json(text: str) -> DockerInfoData | None:
    """
    Parse ``docker info --format '{{json .}}'``. Without a daemon the client still prints an
    object, with an empty ServerVersion: that means no daemon answered, so None.
    """
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(info, dict) or not info.get("ServerVersion"):
        return None
    return {
        "server_version": info["ServerVersion"],
        "runtimes": info.get("Runtimes") or {},
        "default_runtime": info.get("DefaultRuntime") or "",
        "containers_running": info.get("ContainersRunning") or 0,
        "live_restore": bool(info.get("LiveRestoreEnabled")),
    }


class DockerInfo(FactBase[DockerInfoData | None]):
    """
    Returns the daemon's version, registered runtimes, default runtime, running container count
    and whether live-restore is on; None when the docker client is absent or no daemon answers.
    """

    def command(self) -> str:
        return (
            "if command -v docker >/dev/null 2>&1; then "
            "docker info --format '{{json .}}' 2>/dev/null; fi; true"
        )

    def process(self, output: list[str]) -> DockerInfoData | None:
        return parse_docker_info_json("\n".join(output))


class DockerImageId(FactBase[str | None]):
    """
    Returns the id of the local image ``image`` (a reference such as
    ``tensorflow/tensorflow:2.9.0-gpu``), or None when it is absent or docker does not answer.
    """

    def command(self, image: str) -> str:
        if not image:
            return "true"
        return (
            "if command -v docker >/dev/null 2>&1; then "
            f"docker image inspect --format '{{{{.Id}}}}' {shlex.quote(image)} 2>/dev/null; "
            "fi; true"
        )

    def process(self, output: list[str]) -> str | None:
        ids = [line.strip() for line in output if line.strip().startswith("sha256:")]
        return ids[0] if ids else None
