"""
The docker group's members gpufleet manages (`docker_users`): it creates no user, and takes out
of the group only the users it put there itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

DOCKER_GROUP = "docker"
# Debian's adduser default NAME_REGEX, the names gpufleet writes into gpasswd's command line.
USER_NAME = re.compile(r"[a-z][-a-z0-9_]{0,31}")
# Who gpufleet added to the docker group, one name per line: the only ones it may take out.
ADDED_USERS_PATH = "/etc/gpufleet/docker-users"


@dataclass(frozen=True)
class GroupChange:
    add: list[str]
    remove: list[str]
    # Who gpufleet put in the group once the change is made (ADDED_USERS_PATH's lines).
    added_by_gpufleet: list[str]


def docker_group_change(
    wanted: Sequence[str], members: Sequence[str], added_by_gpufleet: Sequence[str]
) -> GroupChange:
    add = [user for user in wanted if user not in members]
    remove = [user for user in added_by_gpufleet if user not in wanted and user in members]
    kept = [user for user in added_by_gpufleet if user in wanted]
    return GroupChange(add, remove, sorted({*kept, *add}))


def missing_users_problem(wanted: Sequence[str], existing: Sequence[str]) -> str | None:
    missing = [user for user in wanted if user not in existing]
    if not missing:
        return None
    return (
        f"docker_users names {', '.join(map(repr, missing))}, which the host has no user of: "
        "gpufleet creates no users; create them first or leave them out of docker_users"
    )
