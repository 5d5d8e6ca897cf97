"""
Facts about Docker: the daemon.json file and what the running daemon reports.
"""

from __future__ import annotations

import json
import shlex
from typing import Any, TypedDict

from pyinfra.api import FactBase

# First output line when the file exists, so an empty file differs from an absent one.
DAEMON_JSON_EXISTS_MARKER = "@@gpufleet:daemon-json-exists"


class DockerDaemonConfigInfo(TypedDict):
    exists: bool
    config: dict[str, Any] | None
    parse_error: str | None


class DockerInfoData(TypedDict):
    server_version: str
    runtimes: dict[str, dict[str, Any]]
    default_runtime: str


def parse_daemon_json(text: str) -> DockerDaemonConfigInfo:
    """
    Parse daemon.json text the way dockerd reads it: a UTF-8 byte order mark is allowed and a
    file holding only whitespace is an empty configuration (moby daemon/config/config.go,
    getConflictFreeConfiguration: "early return on empty config").
    """
    content = text.removeprefix("\ufeff")
    if not content.strip():
        return {"exists": True, "config": {}, "parse_error": None}
    try:
        config = json.loads(content)
    except json.JSONDecodeError as error:
        return {
            "exists": True,
            "config": None,
            "parse_error": f"line {error.lineno} column {error.colno}: {error.msg}",
        }
    if not isinstance(config, dict):
        return {
            "exists": True,
            "config": None,
            "parse_error": f"expected a JSON object, got {type(config).__name__}",
        }
    return {"exists": True, "config": config, "parse_error": None}


def parse_daemon_json_output(output: list[str]) -> DockerDaemonConfigInfo:
    if not output or output[0] != DAEMON_JSON_EXISTS_MARKER:
        return {"exists": False, "config": None, "parse_error": None}
    return parse_daemon_json("\n".join(output[1:]))


class DockerDaemonConfig(FactBase[DockerDaemonConfigInfo]):
    """
    Returns whether daemon.json exists and its parsed content, or the JSON error (with line and
    column) that would stop dockerd from starting.
    """

    @staticmethod
    def default() -> DockerDaemonConfigInfo:
        return parse_daemon_json_output([])

    def command(self, path: str = "/etc/docker/daemon.json") -> str:
        quoted = shlex.quote(path)
        return f"if [ -f {quoted} ]; then echo {DAEMON_JSON_EXISTS_MARKER}; cat {quoted}; fi; true"

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
    }


class DockerInfo(FactBase[DockerInfoData | None]):
    """
    Returns the daemon's version, registered runtimes and default runtime; None when the docker
    client is absent or no daemon answers.
    """

    def command(self) -> str:
        return (
            "if command -v docker >/dev/null 2>&1; then "
            "docker info --format '{{json .}}' 2>/dev/null; fi; true"
        )

    def process(self, output: list[str]) -> DockerInfoData | None:
        return parse_docker_info_json("\n".join(output))
