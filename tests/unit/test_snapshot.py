"""Which fact reads the host snapshot answers (facts/snapshot.py), and with what."""

from __future__ import annotations

from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from gpufleet.facts.apt import DebPackageStates
from gpufleet.facts.files import FileDigests
from gpufleet.facts.gpu_host import CommandInstalled
from gpufleet.facts.snapshot import Reading, complete_arguments

PACKAGES = Reading(
    DebPackageStates,
    {"packages": ["linux-headers-[0-9]*", "nvidia-driver-470"]},
    {
        "linux-headers-5.4.0-150-generic": {"version": "1", "held": False, "installed": True},
        "linux-headers-5.4.0-150": {"version": "1", "held": False, "installed": True},
        "nvidia-driver-470": {"version": "2", "held": True, "installed": True},
    },
)


def test_package_reads_are_answered_by_name_or_by_dpkg_pattern() -> None:
    wanted = {"packages": ["linux-headers-5.4.0-150-generic", "nvidia-driver-470"]}
    assert PACKAGES.answers(DebPackageStates, wanted)
    assert PACKAGES.answer(wanted) == {
        "linux-headers-5.4.0-150-generic": {"version": "1", "held": False, "installed": True},
        "nvidia-driver-470": {"version": "2", "held": True, "installed": True},
    }
    # Read but absent (dpkg does not know it): the answer leaves it out, as dpkg-query does.
    assert PACKAGES.answer({"packages": ["linux-headers-6.1.0-26-amd64"]}) == {}


def test_items_outside_the_reading_are_not_answered() -> None:
    assert not PACKAGES.answers(DebPackageStates, {"packages": ["nvidia-driver-535"]})
    digests = Reading(FileDigests, {"paths": ["/etc/a"]}, {"/etc/a": "00"})
    assert not digests.answers(FileDigests, {"paths": ["/etc/a", "/etc/b"]})
    # Paths are not patterns.
    assert not Reading(FileDigests, {"paths": ["/etc/*"]}, {}).answers(
        FileDigests, {"paths": ["/etc/a"]}
    )


def test_other_arguments_and_facts_must_be_the_same() -> None:
    units = complete_arguments(SystemdStatus, {"services": ["docker.service"]})
    running = Reading(SystemdStatus, units, {"docker.service": True})
    assert running.answers(SystemdStatus, units)
    assert not running.answers(SystemdEnabled, units)
    assert not running.answers(SystemdStatus, {**units, "user_mode": True})
    dockerd = Reading(CommandInstalled, {"command_name": "dockerd"}, True)
    assert dockerd.answers(CommandInstalled, {"command_name": "dockerd"})
    assert not dockerd.answers(CommandInstalled, {"command_name": "docker"})
