"""
gpufleet/operations/packages.py in pyinfra's operation fixture style: each case gives the
operation's arguments, the facts it reads and exactly the commands it yields.
"""

from __future__ import annotations

import pytest

from gpufleet.operations.packages import pinned_packages, signed_repository, transaction
from tests.fakehost import OperationCase, operation_commands

APT_GET = (
    "DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=600"
    " -o Acquire::http::Timeout=30 -o Acquire::https::Timeout=30 -o Acquire::Retries=0"
    " -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
)
HELD_CUDNN_FOR_11_2 = {"version": "8.1.1.33-1+cuda11.2", "held": True, "installed": True}
CUDNN_PIN = {"packages": {"libcudnn8": "8.1.1.33-*+cuda11.2"}, "lock_timeout": 600}
# The steps of a package change; transaction() (the wrapper that runs them to their end, one
# at a time) is the same for every change and checked on booted hosts by tests/e2e.
INSTALL_CUDNN_AND_HOLD = [
    f"{APT_GET} update",
    f"{APT_GET} install --no-install-recommends --allow-downgrades --allow-change-held-packages"
    " 'libcudnn8=8.1.1.33-*+cuda11.2'",
    "apt-mark hold libcudnn8",
]

PINNED_PACKAGES_CASES = [
    OperationCase(
        id="absent-installs-and-holds",
        args=CUDNN_PIN,
        facts={"DebPackageStates": {}},
        commands=[transaction(INSTALL_CUDNN_AND_HOLD, 600)],
    ),
    OperationCase(
        id="held-at-the-pin-changes-nothing",
        args=CUDNN_PIN,
        facts={"DebPackageStates": {"libcudnn8": HELD_CUDNN_FOR_11_2}},
        commands=[],
    ),
    OperationCase(
        id="unheld-at-the-pin-is-held",
        args=CUDNN_PIN,
        facts={"DebPackageStates": {"libcudnn8": {**HELD_CUDNN_FOR_11_2, "held": False}}},
        commands=["apt-mark hold libcudnn8"],
    ),
    OperationCase(
        # Same version, built for another CUDA: the +cuda suffix is part of the pin.
        id="build-for-another-cuda-is-replaced",
        args=CUDNN_PIN,
        facts={
            "DebPackageStates": {
                "libcudnn8": {**HELD_CUDNN_FOR_11_2, "version": "8.1.1.33-1+cuda10.2"}
            }
        },
        commands=[transaction(INSTALL_CUDNN_AND_HOLD, 600)],
    ),
    OperationCase(
        id="unpinned-and-unheld-is-installed-only",
        args={"packages": {"docker.io": None}, "lock_timeout": 600, "hold": False},
        facts={"DebPackageStates": {}},
        commands=[
            transaction(
                [
                    f"{APT_GET} update",
                    f"{APT_GET} install --no-install-recommends --allow-downgrades"
                    " --allow-change-held-packages docker.io",
                ],
                600,
            )
        ],
    ),
    OperationCase(
        id="unpinned-present-changes-nothing",
        args={"packages": {"docker.io": None}, "lock_timeout": 600, "hold": False},
        facts={
            "DebPackageStates": {
                "docker.io": {"version": "20.10.24+dfsg1-1+b3", "held": False, "installed": True}
            }
        },
        commands=[],
    ),
]

KEYRING = b"\x99\x00\x0dfixture-key"
SOURCE_LINE = b"deb [signed-by=/etc/apt/keyrings/cuda.gpg] https://mirror.example.com/cuda/ /\n"
MIRROR = {"repository": "cuda", "url": "https://mirror.example.com/cuda/", "keyring": KEYRING}
# sha256sum of KEYRING and SOURCE_LINE: the repository's own files are up to date.
UP_TO_DATE = {
    "/etc/apt/keyrings/cuda.gpg": (
        "64dcbefdd897a9842e17a98e305e43069c53ca8417eaf00b49e06304847bf00e"
    ),
    "/etc/apt/sources.list.d/cuda.list": (
        "3c74beaee5d204eacc943ec7333fbca8c30085d4c0cc2a2c63159c7e175c0970"
    ),
}
WRITE_KEYRING_AND_SOURCE = [
    "mkdir -p /etc/apt/keyrings /etc/apt/sources.list.d",
    "upload /etc/apt/keyrings/cuda.gpg",
    "upload /etc/apt/sources.list.d/cuda.list",
    "chmod 644 /etc/apt/keyrings/cuda.gpg /etc/apt/sources.list.d/cuda.list",
]

SIGNED_REPOSITORY_CASES = [
    OperationCase(
        id="new-repository",
        args=MIRROR,
        facts={"AptSourceFiles": {}, "FileDigests": {}},
        commands=WRITE_KEYRING_AND_SOURCE,
        uploads={
            "/etc/apt/keyrings/cuda.gpg": KEYRING,
            "/etc/apt/sources.list.d/cuda.list": SOURCE_LINE,
        },
    ),
    OperationCase(
        id="configured-changes-nothing",
        args=MIRROR,
        facts={
            "AptSourceFiles": {"mirror.example.com/cuda": ["/etc/apt/sources.list.d/cuda.list"]},
            "FileDigests": UP_TO_DATE,
        },
        commands=[],
    ),
    OperationCase(
        # The login goes to auth.conf.d, private before its contents arrive; never to the list.
        id="credentials-go-to-auth-conf-d-mode-600",
        args={**MIRROR, "url": "https://fleet:s3cret@mirror.example.com/cuda/"},
        facts={"AptSourceFiles": {}, "FileDigests": {}},
        commands=[
            *WRITE_KEYRING_AND_SOURCE,
            "mkdir -p /etc/apt/auth.conf.d",
            "install -m 600 /dev/null /etc/apt/auth.conf.d/cuda.conf",
            "upload /etc/apt/auth.conf.d/cuda.conf",
            "chmod 600 /etc/apt/auth.conf.d/cuda.conf",
        ],
        uploads={
            "/etc/apt/keyrings/cuda.gpg": KEYRING,
            "/etc/apt/sources.list.d/cuda.list": SOURCE_LINE,
            "/etc/apt/auth.conf.d/cuda.conf": (
                b"machine https://mirror.example.com/cuda login fleet password s3cret\n"
            ),
        },
    ),
    OperationCase(
        # cuda-keyring's list (one-line entries) and a deb822 file for the same repository.
        id="other-files-entries-are-taken-over",
        args=MIRROR,
        facts={
            "AptSourceFiles": {
                "mirror.example.com/cuda": [
                    "/etc/apt/sources.list.d/cuda.list",
                    "/etc/apt/sources.list.d/cuda-ubuntu2004-x86_64.list",
                    "/etc/apt/sources.list.d/nvidia.sources",
                ]
            },
            "FileDigests": UP_TO_DATE,
        },
        commands=[
            "LOCATION=mirror.example.com/cuda NOTE='# disabled by gpufleet, which manages this "
            "repository in /etc/apt/sources.list.d/cuda.list: ' awk 'index($0, "
            'ENVIRON["LOCATION"]) && $0 !~ /^[[:space:]]*#/ { print ENVIRON["NOTE"] $0; next } '
            "{ print }' /etc/apt/sources.list.d/cuda-ubuntu2004-x86_64.list > "
            "/etc/apt/sources.list.d/cuda-ubuntu2004-x86_64.list.gpufleet-new && cat "
            "/etc/apt/sources.list.d/cuda-ubuntu2004-x86_64.list.gpufleet-new > "
            "/etc/apt/sources.list.d/cuda-ubuntu2004-x86_64.list && rm -f "
            "/etc/apt/sources.list.d/cuda-ubuntu2004-x86_64.list.gpufleet-new",
            "mv -f /etc/apt/sources.list.d/nvidia.sources "
            "/etc/apt/sources.list.d/nvidia.sources.disabled",
        ],
    ),
]


@pytest.mark.parametrize("case", PINNED_PACKAGES_CASES, ids=lambda case: case.id)
def test_pinned_packages(case: OperationCase) -> None:
    planned = operation_commands(pinned_packages, case.args, case.facts)
    assert (planned.commands, planned.uploads) == (case.commands, case.uploads)


@pytest.mark.parametrize("case", SIGNED_REPOSITORY_CASES, ids=lambda case: case.id)
def test_signed_repository(case: OperationCase) -> None:
    planned = operation_commands(signed_repository, case.args, case.facts)
    assert (planned.commands, planned.uploads) == (case.commands, case.uploads)
