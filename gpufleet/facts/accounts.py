"""The docker group's members, which of some users exist, and whom gpufleet added to the group."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import TypedDict

from pyinfra.api import FactBase

from gpufleet.facts.arguments import require_lists
from gpufleet.stack.accounts import ADDED_USERS_PATH, DOCKER_GROUP


class DockerGroupInfo(TypedDict):
    # None: the host has no docker group (docker is not installed yet).
    members: list[str] | None
    # Of the users asked about, those the host has.
    existing_users: list[str]
    added_by_gpufleet: list[str]


def parse_docker_group(output: list[str]) -> DockerGroupInfo:
    info: DockerGroupInfo = {"members": None, "existing_users": [], "added_by_gpufleet": []}
    for line in output:
        kind, _, value = line.partition("\t")
        if kind == "group":
            # getent's group line: name:password:gid:member,member,...
            members = value.split(":")[3] if value.count(":") >= 3 else ""
            info["members"] = [name for name in members.split(",") if name]
        elif kind == "user" and value:
            info["existing_users"].append(value)
        elif kind == "added" and value.strip():
            info["added_by_gpufleet"].append(value.strip())
    return info


class DockerGroup(FactBase[DockerGroupInfo]):
    """
    Returns the docker group's members (None without the group), which of ``users`` exist on
    the host, and the users gpufleet recorded adding to the group.
    """

    @staticmethod
    def default() -> DockerGroupInfo:
        return parse_docker_group([])

    def command(self, users: Sequence[str] = ()) -> str:
        require_lists(self, users=users)
        names = " ".join(shlex.quote(user) for user in users)
        check_users = (
            f'for user in {names}; do if getent passwd "$user" >/dev/null; then '
            'printf "user\\t%s\\n" "$user"; fi; done; '
            if users
            else ""
        )
        return (
            f"getent group {DOCKER_GROUP} | sed 's/^/group\\t/'; {check_users}"
            f"sed 's/^/added\\t/' {ADDED_USERS_PATH} 2>/dev/null; true"
        )

    def process(self, output: list[str]) -> DockerGroupInfo:
        return parse_docker_group(output)
