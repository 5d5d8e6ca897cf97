"""
The docker group's members: the inventory's users put in, and those gpufleet put in taken out
once they leave the list; everyone else in the group is left alone.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, operation
from pyinfra.api.command import PyinfraCommand

from gpufleet.facts import snapshot
from gpufleet.facts.accounts import DockerGroup
from gpufleet.operations.managed_files import upload_changed
from gpufleet.stack.accounts import ADDED_USERS_PATH, DOCKER_GROUP, docker_group_change


@operation()
def docker_group_members(users: list[str]):
    """
    Make ``users`` members of the docker group, recording them as gpufleet's; take out the
    users gpufleet recorded that are no longer in ``users``.

    + users: existing users (the deploy refuses names the host has no user of)
    """
    group = snapshot.current(DockerGroup, users=users)
    change = docker_group_change(users, group["members"] or [], group["added_by_gpufleet"])
    commands: list[PyinfraCommand] = [
        *(
            StringCommand("gpasswd", "--add", QuoteString(user), DOCKER_GROUP)
            for user in change.add
        ),
        *(
            StringCommand("gpasswd", "--delete", QuoteString(user), DOCKER_GROUP)
            for user in change.remove
        ),
    ]
    record = "".join(f"{user}\n" for user in change.added_by_gpufleet)
    if record or group["added_by_gpufleet"]:
        commands += upload_changed({ADDED_USERS_PATH: record.encode()}, "644")
    if not commands:
        host.noop(f"docker group members: {', '.join(users) or 'none'} as listed")
        return
    yield from commands
