"""
The driver's packages as NVIDIA's repositories name them: Ubuntu's branch-suffixed families and
Debian's one name per role, headless or full, open or proprietary kernel modules; and which
installed packages a new choice replaces.
"""

from __future__ import annotations

import pytest

from gpufleet.stack.catalog import (
    DRIVER_PACKAGE_PATTERNS,
    DriverChoice,
    KernelModules,
    driver_packages,
    replaced_driver_packages,
)
from gpufleet.stack.repositories import DriverNaming
from tests.unit.driver_packages import (
    DEBIAN_FULL_OPEN,
    DEBIAN_HEADLESS_PROPRIETARY,
    R470_FULL_PROPRIETARY,
    R470_HEADLESS_PROPRIETARY,
    R580_FULL_OPEN,
    R580_FULL_PROPRIETARY,
    R580_HEADLESS_OPEN,
    R580_HEADLESS_PROPRIETARY,
)

OPEN, PROPRIETARY = KernelModules.OPEN, KernelModules.PROPRIETARY
UBUNTU, DEBIAN = DriverNaming.UBUNTU, DriverNaming.DEBIAN


def ubuntu(branch: str, version: str, modules: KernelModules, headless: bool) -> DriverChoice:
    return DriverChoice(UBUNTU, branch, version, modules, headless)


def debian(branch: str, version: str, modules: KernelModules, headless: bool) -> DriverChoice:
    return DriverChoice(DEBIAN, branch, version, modules, headless)


@pytest.mark.parametrize(
    ("choice", "names"),
    [
        (ubuntu("580", "580.159.04", OPEN, True), R580_HEADLESS_OPEN),
        (ubuntu("580", "580.159.04", PROPRIETARY, True), R580_HEADLESS_PROPRIETARY),
        (ubuntu("580", "580.159.04", OPEN, False), R580_FULL_OPEN),
        (ubuntu("580", "580.159.04", PROPRIETARY, False), R580_FULL_PROPRIETARY),
    ],
    ids=["headless-open", "headless-proprietary", "full-open", "full-proprietary"],
)
def test_ubuntu_r580_packages_are_pinned_to_the_release(
    choice: DriverChoice, names: list[str]
) -> None:
    assert driver_packages(choice) == dict.fromkeys(names, "580.159.04-*")


@pytest.mark.parametrize(
    ("headless", "names"),
    [(False, R470_FULL_PROPRIETARY), (True, R470_HEADLESS_PROPRIETARY)],
    ids=["full", "headless"],
)
def test_ubuntu_r470_has_nvifr_in_its_full_driver(headless: bool, names: list[str]) -> None:
    choice = ubuntu("470", "470.182.03", PROPRIETARY, headless)
    assert driver_packages(choice) == dict.fromkeys(names, "470.182.03-*")


def test_debian_names_carry_the_branch_in_the_version_only() -> None:
    assert driver_packages(debian("580", "580.159.04", PROPRIETARY, True)) == dict.fromkeys(
        DEBIAN_HEADLESS_PROPRIETARY, "580.159.04-*"
    )
    assert driver_packages(debian("580", "580.159.04", OPEN, False)) == dict.fromkeys(
        DEBIAN_FULL_OPEN, "580.159.04-*"
    )


def test_debian_gsp_firmware_comes_with_r525() -> None:
    r535 = driver_packages(debian("535", "535.183.01", PROPRIETARY, True))
    r470 = driver_packages(debian("470", "470.182.03", PROPRIETARY, True))
    assert r535["firmware-nvidia-gsp"] == "535.183.01-*"
    assert sorted(r470) == [n for n in DEBIAN_HEADLESS_PROPRIETARY if n != "firmware-nvidia-gsp"]


@pytest.mark.parametrize(
    "choice",
    [
        ubuntu("580", "580.159.04", OPEN, False),
        ubuntu("470", "470.182.03", PROPRIETARY, False),
        debian("580", "580.159.04", OPEN, False),
        debian("535", "535.183.01", PROPRIETARY, False),
    ],
    ids=["ubuntu-580-open", "ubuntu-470", "debian-580-open", "debian-535"],
)
def test_the_host_read_covers_every_driver_package(choice: DriverChoice) -> None:
    # The read's dpkg-query globs list every package of any branch, so a change sees the old.
    from fnmatch import fnmatchcase

    uncovered = [
        name
        for name in driver_packages(choice)
        if not any(fnmatchcase(name, pattern) for pattern in DRIVER_PACKAGE_PATTERNS)
    ]
    assert uncovered == []


def test_a_branch_change_replaces_the_old_family_but_not_the_companions() -> None:
    installed = [*R470_FULL_PROPRIETARY, "bash", "cuda-toolkit-11-2", "libcudnn8"]
    assert replaced_driver_packages(installed, ubuntu("580", "580.159.04", PROPRIETARY, False)) == [
        "cuda-drivers-470",
        "libnvidia-cfg1-470",
        "libnvidia-common-470",
        "libnvidia-compute-470",
        "libnvidia-decode-470",
        "libnvidia-encode-470",
        "libnvidia-extra-470",
        "libnvidia-fbc1-470",
        "libnvidia-gl-470",
        "libnvidia-ifr1-470",
        "nvidia-compute-utils-470",
        "nvidia-dkms-470",
        "nvidia-driver-470",
        "nvidia-headless-470",
        "nvidia-headless-no-dkms-470",
        "nvidia-kernel-common-470",
        "nvidia-kernel-source-470",
        "nvidia-utils-470",
        "xserver-xorg-video-nvidia-470",
    ]


def test_a_flavour_change_replaces_the_conflicting_kernel_packages() -> None:
    # Proprietary to open, same branch: the module packages and the metapackages naming them.
    open_full = ubuntu("580", "580.159.04", OPEN, False)
    assert replaced_driver_packages(R580_FULL_PROPRIETARY, open_full) == [
        "cuda-drivers-580",
        "nvidia-dkms-580",
        "nvidia-driver-580",
        "nvidia-headless-580",
        "nvidia-headless-no-dkms-580",
        "nvidia-kernel-source-580",
    ]
    debian_open = debian("580", "580.159.04", OPEN, True)
    assert replaced_driver_packages(DEBIAN_HEADLESS_PROPRIETARY, debian_open) == [
        "nvidia-kernel-dkms"
    ]


def test_going_headless_replaces_the_graphics_part() -> None:
    headless = ubuntu("580", "580.159.04", PROPRIETARY, True)
    # The branch-less companions (nvidia-settings, libxnvctrl0) stay: only pins move them.
    assert replaced_driver_packages(R580_FULL_PROPRIETARY, headless) == [
        "cuda-drivers-580",
        "libnvidia-fbc1-580",
        "libnvidia-gl-580",
        "nvidia-driver-580",
        "xserver-xorg-video-nvidia-580",
    ]
    debian_headless = debian("580", "580.159.04", PROPRIETARY, True)
    assert replaced_driver_packages(
        [*DEBIAN_HEADLESS_PROPRIETARY, "nvidia-driver", "nvidia-driver-libs", "nvidia-settings"],
        debian_headless,
    ) == ["nvidia-driver", "nvidia-driver-libs"]


def test_the_kept_choice_replaces_nothing() -> None:
    assert replaced_driver_packages(R580_FULL_OPEN, ubuntu("580", "1", OPEN, False)) == []
    assert replaced_driver_packages(DEBIAN_FULL_OPEN, debian("590", "1", OPEN, False)) == []
