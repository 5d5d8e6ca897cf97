"""
gpufleet's default stack on each OS release it supports, each host booted from that release's own
archive and pointed at the stand-in of NVIDIA's repository for it. Only Ubuntu 20.04's repository
carries CUDA 11.2 and cuDNN 8.1: there the stack converges from apt and a re-run changes
nothing; the other releases need NVIDIA's runfile and cuDNN archive, and without their pinned
digests the planner refuses before any change, naming the keys to set.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.fleet import Fleet, FleetFactory, TestHost
from testbed.repos import RepoTree
from testbed.runs import repo_data, run_deploy

pytestmark = pytest.mark.e2e

# Every package, every hold, every file under /etc: what "unchanged" is checked on.
HOST_STATE = (
    "dpkg-query -W -f '${Package} ${Version} ${Status}\\n'; echo '-- holds'; apt-mark showhold; "
    "echo '-- etc'; find /etc -xdev -type f ! -name ld.so.cache -print0 | sort -z "
    "| xargs -0 sha256sum"
)
# The R535 driver, headless, proprietary modules: Ubuntu 20.04's default (its NVIDIA repository
# has no R580), from NVIDIA's ubuntu2004 repository, each package held.
UBUNTU_2004_DRIVER = {
    "libnvidia-cfg1-535": "535.183.01-0ubuntu1",
    "libnvidia-common-535": "535.183.01-0ubuntu1",
    "libnvidia-compute-535": "535.183.01-0ubuntu1",
    "libnvidia-decode-535": "535.183.01-0ubuntu1",
    "libnvidia-encode-535": "535.183.01-0ubuntu1",
    "libnvidia-extra-535": "535.183.01-0ubuntu1",
    "nvidia-compute-utils-535": "535.183.01-0ubuntu1",
    "nvidia-dkms-535": "535.183.01-0ubuntu1",
    "nvidia-headless-535": "535.183.01-0ubuntu1",
    "nvidia-headless-no-dkms-535": "535.183.01-0ubuntu1",
    "nvidia-kernel-common-535": "535.183.01-0ubuntu1",
    "nvidia-kernel-source-535": "535.183.01-0ubuntu1",
    "nvidia-modprobe": "535.183.01-0ubuntu1",
    "nvidia-utils-535": "535.183.01-0ubuntu1",
}
UNATTENDED_UPGRADES_BLACKLIST = "/etc/apt/apt.conf.d/51gpufleet-unattended-upgrades"
# Lets unattended-upgrades take NVIDIA's packages, as fleets that follow NVIDIA's repository do.
NVIDIA_ORIGIN = "/etc/apt/apt.conf.d/52test-nvidia-origin"


def ssh_ok(fleet: Fleet, host: TestHost, command: str) -> str:
    result = fleet.ssh(host, command)
    assert result.returncode == 0, f"{command}:\n{result.stdout}{result.stderr}"
    return result.stdout


def inventory(fleet: Fleet, tmp_path: Path, repo: RepoTree, release: str) -> Path:
    # Verification needs a TensorFlow image the hosts cannot pull: tests/e2e/test_verify.py.
    data = {**repo_data(repo, release), "gpu_verify": False}
    return fleet.write_inventory(tmp_path / f"inventory_{fleet.prefix}.py", data)


def unattended_upgrades_plan(fleet: Fleet, host: TestHost) -> str:
    """What unattended-upgrades would upgrade now (its dry run's debug output)."""
    return ssh_ok(fleet, host, "unattended-upgrade --dry-run --debug 2>&1")


def test_ubuntu_2004_converges_the_default_stack_and_unattended_upgrades_leave_it(
    fleet_factory: FleetFactory, repo_tree: RepoTree, tmp_path: Path
) -> None:
    fleet = fleet_factory(count=1, os_release="ubuntu20.04")
    (host,) = fleet.hosts
    ssh_ok(
        fleet,
        host,
        "apt-get update -q && DEBIAN_FRONTEND=noninteractive "
        "apt-get install -y -q --no-install-recommends unattended-upgrades",
    )
    path = inventory(fleet, tmp_path, repo_tree, "ubuntu20.04")

    first = run_deploy(fleet, path)
    assert first.returncode == 0, first.output[-6000:]
    # No GPU on this host's bus: planned and installed all the same (golden images).
    assert "no NVIDIA GPU seen on the PCI bus: the pinned stack is installed" in first.output
    installed = dict(
        line.split(" ", 1)
        for line in ssh_ok(
            fleet, host, "dpkg-query -W -f '${Package} ${Version}\\n' 'nvidia-*' 'libnvidia-*'"
        ).splitlines()
        if not line.endswith(" ")  # names dpkg knows but that are not installed
    )
    driver = {name: version for name, version in installed.items() if "container" not in name}
    assert driver == UBUNTU_2004_DRIVER
    assert set(UBUNTU_2004_DRIVER) <= set(ssh_ok(fleet, host, "apt-mark showhold").split())
    # Headless: no X server came with the driver.
    assert fleet.ssh(host, "dpkg-query -W xserver-xorg-core").returncode != 0
    assert ssh_ok(fleet, host, "dpkg-query -W -f '${Version}' cuda-toolkit-11-2") == "11.2.2-1"
    assert ssh_ok(fleet, host, "dpkg-query -W -f '${Version}' nvidia-container-toolkit") == (
        "1.17.8-1"
    )

    second = run_deploy(fleet, path)
    assert second.returncode == 0, second.output[-6000:]
    assert second.changed() == {}, second.changed()

    # A release the repository does not have: the host's apt, which now has its lists, says so
    # in the one read, and the host is refused as it is.
    before = ssh_ok(fleet, host, HOST_STATE)
    missing = fleet.write_inventory(
        tmp_path / "inventory-missing.py",
        {**repo_data(repo_tree, "ubuntu20.04"), "gpu_verify": False,
         "nvidia_driver_version": "535.216.01"},
    )  # fmt: skip
    refused = run_deploy(fleet, missing)
    assert refused.returncode != 0
    flat = " ".join(refused.output.split())
    assert (
        "nvidia_driver_version = '535.216.01': the host's apt, with the repository at "
        f"{repo_tree.cuda_repo_url('ubuntu2004')}, offers no libnvidia-cfg1-535 535.216.01-* "
        "(offered: 535.183.01-0ubuntu1)" in flat
    ), refused.output[-4000:]
    assert ssh_ok(fleet, host, HOST_STATE) == before

    # The driver's libraries stay put under unattended-upgrades even with a hold lifted and
    # NVIDIA's origin allowed (nvidia-modprobe has a newer release in the repository) ...
    allow_nvidia = 'Unattended-Upgrade::Origins-Pattern { "origin=NVIDIA"; };'
    ssh_ok(
        fleet,
        host,
        f"echo '{allow_nvidia}' > {NVIDIA_ORIGIN} && apt-mark unhold nvidia-modprobe "
        "&& apt-get update -q",
    )
    kept = unattended_upgrades_plan(fleet, host)
    assert "nvidia-modprobe" not in upgraded_packages(kept), kept
    # ... because of gpufleet's blacklist: without it, the same run would take it.
    ssh_ok(fleet, host, f"mv {UNATTENDED_UPGRADES_BLACKLIST} /root/blacklist.saved")
    taken = unattended_upgrades_plan(fleet, host)
    assert "nvidia-modprobe" in upgraded_packages(taken), taken


# Without cuda-toolkit-11-2 in their repository, the other releases need NVIDIA's files
# (tests/e2e/test_artifacts.py installs them on Ubuntu 22.04 and Debian 12).
NEEDS_RUNFILE = (
    "CUDA 11.2.2 comes from NVIDIA's runfile here: set cuda_runfile_sha256 (an artifact is "
    "fetched and used only with its pinned sha256)"
)
NEEDS_ARCHIVE = (
    "cuDNN comes from NVIDIA's tar archive here: set cudnn_archive_url and cudnn_archive_sha256"
)


def upgraded_packages(debug_output: str) -> set[str]:
    """The packages of unattended-upgrade's "Packages that will be upgraded:" line."""
    for line in debug_output.splitlines():
        if "Packages that will be upgraded:" in line:
            return set(line.split("Packages that will be upgraded:", 1)[1].split())
    return set()


@pytest.mark.parametrize(
    ("release", "reasons"),
    [
        ("ubuntu24.04", [NEEDS_RUNFILE, NEEDS_ARCHIVE]),
        ("debian11", [NEEDS_RUNFILE, NEEDS_ARCHIVE]),
        ("debian13", ["nvidia_driver_branch (default '580'): NVIDIA's debian13 repository has no "
                      "R580 driver packages; it carries 590, 595, 610"]),
    ],
)  # fmt: skip
def test_releases_without_cuda_11_2_and_no_artifacts_pinned_are_refused_unchanged(
    fleet_factory: FleetFactory, repo_tree: RepoTree, tmp_path: Path, release: str,
    reasons: list[str],
) -> None:  # fmt: skip
    fleet = fleet_factory(count=1, os_release=release)
    (host,) = fleet.hosts
    before = ssh_ok(fleet, host, HOST_STATE)
    path = inventory(fleet, tmp_path, repo_tree, release)

    for attempt in ("first run", "re-run"):
        run = run_deploy(fleet, path)
        assert run.returncode != 0, f"{attempt}: {run.output[-4000:]}"
        flat = " ".join(run.output.split())
        for reason in reasons:
            assert reason in flat, f"{attempt}: {run.output[-4000:]}"
        assert ssh_ok(fleet, host, HOST_STATE) == before, attempt
