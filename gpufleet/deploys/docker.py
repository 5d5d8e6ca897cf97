"""
Docker with the nvidia runtime: /etc/docker/daemon.json is MERGED, never overwritten.

Every key the user had stays; gpufleet adds `runtimes.nvidia`, sets `default-runtime` and the
inventory's `docker_daemon_config` keys (and takes back only those of them it set before). The
file is rewritten only when its parsed content changes; docker restarts when it was rewritten or
when the running daemon differs from it, and never under running containers unless allowed.
"""

from __future__ import annotations

from typing import Any

from pyinfra.api import deploy

from gpufleet.operations import packages as apt
from gpufleet.operations import units as systemd
from gpufleet.operations.accounts import docker_group_members
from gpufleet.operations.docker_daemon import DOCKER_SERVICE, daemon_config, restart_for_config
from gpufleet.stack.daemon_json import DAEMON_JSON_PATH


@deploy("Docker with the nvidia runtime")
def docker(
    docker_package: str,
    default_runtime: str | None,
    daemon_settings: dict[str, Any],
    lock_timeout: int,
    users: list[str],
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
    docker_group_members(name="docker group members (docker_users)", users=users)
