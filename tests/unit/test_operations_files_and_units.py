"""
gpufleet/operations/managed_files.py and units.py in pyinfra's operation fixture style: each
case gives the operation's arguments, the facts it reads and exactly the commands it yields.
"""

from __future__ import annotations

from typing import Any

import pytest
from pyinfra.api import OperationError

from gpufleet.operations.managed_files import contents, link
from gpufleet.operations.units import runs_with, service
from tests.fakehost import OperationCase, operation_commands

BLACKLIST = "blacklist nouveau\noptions nouveau modeset=0\n"
LINK = {"path": "/etc/systemd/system/x.wants/a.service", "target": "/lib/a.service"}
MAKE_LINK = [
    "mkdir -p /etc/systemd/system/x.wants",
    "ln -sfn /lib/a.service /etc/systemd/system/x.wants/a.service",
]
CASES: list[tuple[Any, OperationCase]] = [
    (
        contents,
        OperationCase(
            id="contents-new-file",
            args={"files": {"/etc/modprobe.d/blacklist-nouveau.conf": BLACKLIST}},
            facts={"FileDigests": {}},
            commands=[
                "mkdir -p /etc/modprobe.d",
                "upload /etc/modprobe.d/blacklist-nouveau.conf",
                "chmod 644 /etc/modprobe.d/blacklist-nouveau.conf",
            ],
            uploads={"/etc/modprobe.d/blacklist-nouveau.conf": BLACKLIST.encode()},
        ),
    ),
    (
        contents,
        OperationCase(
            id="contents-up-to-date",
            args={"files": {"/etc/modprobe.d/blacklist-nouveau.conf": BLACKLIST}},
            facts={
                # sha256sum of BLACKLIST.
                "FileDigests": {
                    "/etc/modprobe.d/blacklist-nouveau.conf": (
                        "3631c609cb22794edd9d980dbf6709dfd5ff13d504483334911e7c7025b0f9a1"
                    )
                }
            },
            commands=[],
        ),
    ),
    (
        contents,
        OperationCase(
            id="contents-private-file-is-created-private",
            args={"files": {"/etc/apt/auth.conf.d/cuda.conf": "machine m\n"}, "mode": "600"},
            facts={"FileDigests": {}},
            commands=[
                "mkdir -p /etc/apt/auth.conf.d",
                "install -m 600 /dev/null /etc/apt/auth.conf.d/cuda.conf",
                "upload /etc/apt/auth.conf.d/cuda.conf",
                "chmod 600 /etc/apt/auth.conf.d/cuda.conf",
            ],
            uploads={"/etc/apt/auth.conf.d/cuda.conf": b"machine m\n"},
        ),
    ),
    (
        link,
        OperationCase(
            id="link-absent",
            args=LINK,
            facts={"SymlinkTargets": {}},
            commands=MAKE_LINK,
        ),
    ),
    (
        link,
        OperationCase(
            id="link-elsewhere",
            args=LINK,
            facts={"SymlinkTargets": {"/etc/systemd/system/x.wants/a.service": "/dev/null"}},
            commands=MAKE_LINK,
        ),
    ),
    (
        link,
        OperationCase(
            id="link-in-place",
            args=LINK,
            facts={"SymlinkTargets": {"/etc/systemd/system/x.wants/a.service": "/lib/a.service"}},
            commands=[],
        ),
    ),
    (
        service,
        OperationCase(
            id="service-stopped-and-disabled",
            args={"unit": "docker.service", "enabled": True},
            facts={
                "SystemdStatus": {"docker.service": False},
                "SystemdEnabled": {"docker.service": False},
            },
            commands=["systemctl start docker.service", "systemctl enable docker.service"],
        ),
    ),
    (
        service,
        OperationCase(
            id="service-running-and-enabled",
            args={"unit": "docker.service", "enabled": True},
            facts={
                "SystemdStatus": {"docker.service": True},
                "SystemdEnabled": {"docker.service": True},
            },
            commands=[],
        ),
    ),
    (
        service,
        OperationCase(
            id="service-restarted",
            args={"unit": "docker.service", "restarted": True},
            facts={"SystemdStatus": {"docker.service": True}},
            commands=["systemctl restart docker.service"],
        ),
    ),
    (
        runs_with,
        OperationCase(
            # Ubuntu's own unit, before gpufleet's drop-in is loaded.
            id="runs-with-lacking-the-argument",
            args={"unit": "nvidia-persistenced.service", "argument": "--persistence-mode"},
            facts={
                "UnitMainCommands": {
                    "nvidia-persistenced.service": "/usr/bin/nvidia-persistenced"
                    " --user nvidia-persistenced --no-persistence-mode --verbose"
                }
            },
            commands=["systemctl daemon-reload", "systemctl restart nvidia-persistenced.service"],
        ),
    ),
    (
        runs_with,
        OperationCase(
            id="runs-with-the-argument",
            args={"unit": "nvidia-persistenced.service", "argument": "--persistence-mode"},
            facts={
                "UnitMainCommands": {
                    "nvidia-persistenced.service": "/usr/bin/nvidia-persistenced"
                    " --user nvidia-persistenced --persistence-mode --verbose"
                }
            },
            commands=[],
        ),
    ),
    (
        runs_with,
        OperationCase(
            id="runs-with-not-running",
            args={"unit": "nvidia-persistenced.service", "argument": "--persistence-mode"},
            facts={"UnitMainCommands": {}},
            commands=[],
        ),
    ),
]


@pytest.mark.parametrize(("operation", "case"), CASES, ids=lambda value: getattr(value, "id", ""))
def test_operation(operation: Any, case: OperationCase) -> None:
    planned = operation_commands(operation, case.args, case.facts)
    assert (planned.commands, planned.uploads) == (case.commands, case.uploads)


def test_link_over_something_else_is_an_error() -> None:
    with pytest.raises(OperationError, match="/etc/a exists and is not a link"):
        operation_commands(
            link, {"path": "/etc/a", "target": "/lib/a"}, {"SymlinkTargets": {"/etc/a": None}}
        )
