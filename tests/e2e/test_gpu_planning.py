"""
GPU-aware planning end to end. Test hosts present stand-in GPUs on their PCI bus (a stand-in
lspci and nvidia-smi, testbed/standin_gpus.py): an HGX A100 board converges with the open kernel
modules and the fabric manager at the driver's exact version, held and running, with the
JIT-only warning for TensorFlow 2.9 in its plan, and the rollout's driver change moves the
fabric manager with the driver; an H100 host pinned to R470 is refused for the branch and for
TensorFlow 2.9 and left byte-for-byte as it was.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.fleet import FleetFactory
from testbed.images import build_image_tarball, import_image
from testbed.repos import RepoTree
from testbed.runs import repo_data, run_deploy
from testbed.standin_gpus import A100_NVSWITCH, A100_SXM4_80GB, H100_80GB_HBM3, present_gpus
from tests.e2e.test_driver_upgrade import running_driver
from tests.e2e.test_gpu_host_deploy import SNAPSHOT, TEST_IMAGE, assert_converged, ssh_ok

pytestmark = pytest.mark.e2e

# Ubuntu 20.04's default driver (R535, the newest branch gpufleet pins that NVIDIA's ubuntu2004
# repository carries), and the R550 release of that repository the rollout moves to.
R535, R550 = "535.183.01", "550.144.03"
FABRIC_MANAGER_LOG = "/var/log/fabricmanager.log"
MOK_KEY, MOK_CERT = "/root/mok/MOK.priv", "/root/mok/MOK.der"
DKMS_SIGNING = "/etc/dkms/framework.conf.d/gpufleet-module-signing.conf"


def test_hgx_a100_gets_open_modules_and_the_fabric_manager_and_h100_on_r470_is_refused(
    fleet_factory: FleetFactory, repo_tree: RepoTree, cache_dir: Path, tmp_path: Path
) -> None:
    fleet = fleet_factory(count=2, os_release="ubuntu20.04")
    hgx, h100 = fleet.hosts
    present_gpus(fleet, hgx, [A100_SXM4_80GB] * 8, [A100_NVSWITCH] * 6)
    present_gpus(fleet, h100, [H100_80GB_HBM3] * 2)
    # A Machine Owner Key the HGX host's DKMS signs with (Secure Boot hosts need one).
    ssh_ok(fleet, hgx, f"install -d -m 700 /root/mok && install -m 600 /dev/null {MOK_KEY} && "
                       f"install -m 644 /dev/null {MOK_CERT}")  # fmt: skip
    h100_before = ssh_ok(fleet, h100, SNAPSHOT)
    data = {**repo_data(repo_tree, "ubuntu20.04"), "gpu_verify": False}
    signing: dict[str, object] = {
        "nvidia_module_signing_key": MOK_KEY,
        "nvidia_module_signing_cert": MOK_CERT,
    }
    inventory = fleet.write_inventory(
        tmp_path / "gpus.py",
        data,
        host_data={h100.name: {"nvidia_driver_branch": "470"}, hgx.name: signing},
    )

    # The dry run tells the plan per host and changes nothing.
    dry = run_deploy(fleet, inventory, "--dry")
    assert "fabric manager: yes, for the NVSwitches" in dry.output
    assert "Secure Boot: off" in dry.output or "Secure Boot: unknown" in dry.output
    assert "R470 cannot drive the NVIDIA H100 80GB HBM3" in dry.output
    assert ssh_ok(fleet, h100, SNAPSHOT) == h100_before
    assert fleet.ssh(hgx, "dpkg-query -W nvidia-fabricmanager-535").returncode != 0

    first = run_deploy(fleet, inventory)
    output = first.output
    assert first.returncode != 0, output[-6000:]
    assert (
        "nvidia_driver_branch = '470': R470 cannot drive the NVIDIA H100 80GB HBM3 (Hopper, "
        "compute 9.0) at 0000:07:00.0, 0000:0f:00.0 (driven by R520 to current branches); set "
        "nvidia_driver_branch to one that drives every GPU here: 535"
    ) in output
    assert (
        "TensorFlow 2.9 with cuDNN 8.1 does not support the NVIDIA H100 80GB HBM3 (Hopper, "
        "compute 9.0) (cuDNN 8.1 stops at Ampere)"
    ) in output
    assert ssh_ok(fleet, h100, SNAPSHOT) == h100_before

    # The HGX host's plan, as the operator reads it.
    assert (
        "GPUs: 8x NVIDIA A100-SXM4-80GB (Ampere, compute 8.0) at 0000:07:00.0, 0000:0f:00.0, "
        "0000:47:00.0, 0000:4e:00.0, 0000:87:00.0, 0000:90:00.0, 0000:b7:00.0, 0000:bd:00.0; "
        "6 NVSwitches: fabric manager needed"
    ) in output
    assert "open kernel modules (data center GPUs, production-ready from R515)" in output
    assert "so on the NVIDIA A100-SXM4-80GB (Ampere, compute 8.0) its kernels are JIT-compiled" in (
        output
    )
    assert first.failed().get(hgx.address) is None
    versions = ssh_ok(
        fleet,
        hgx,
        "dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n' "
        "'nvidia-dkms-*' 'nvidia-fabricmanager*'",
    )
    # Installed ("i") and held ("h"): the proprietary flavour is not.
    installed = [line.rstrip() for line in versions.splitlines() if not line.endswith("un ")]
    assert installed == [
        f"nvidia-dkms-535-open {R535}-0ubuntu1 hi",
        f"nvidia-fabricmanager-535 {R535}-1 hi",
    ]
    assert ssh_ok(fleet, hgx, "systemctl is-active nvidia-fabricmanager").strip() == "active"
    assert ssh_ok(fleet, hgx, "systemctl is-enabled nvidia-fabricmanager").strip() == "enabled"
    assert "Successfully configured all the available NVSwitches" in ssh_ok(
        fleet, hgx, f"cat {FABRIC_MANAGER_LOG}"
    )
    assert ssh_ok(fleet, hgx, f"cat {DKMS_SIGNING}") == (
        "# Managed by gpufleet: Secure Boot loads only modules signed with an enrolled key.\n"
        f'mok_signing_key="{MOK_KEY}"\nmok_certificate="{MOK_CERT}"\n'
    )

    hgx_only = fleet.write_inventory(tmp_path / "hgx.py", {**data, **signing})
    second = run_deploy(fleet, hgx_only, "--limit", hgx.address)
    assert_converged(second)
    assert second.changed() == {}

    # The rollout to R550 takes the fabric manager along: R535's is replaced by R550's.
    tarball = build_image_tarball("debian12", cache_dir, ["python3"])
    import_image(fleet, hgx, tarball, TEST_IMAGE)
    upgrade = fleet.write_inventory(
        tmp_path / "upgrade.py",
        {
            **data,
            **signing,
            "nvidia_driver_version": R550,
            "gpu_reboot_allowed": True,
            "tensorflow_image": TEST_IMAGE,
            "gpu_results_dir": str(tmp_path / "results"),
        },
    )
    # The deploy the rollout runs on each host of a batch.
    rolled = run_deploy(fleet, upgrade, "--limit", hgx.address, deploy="deploys/driver_upgrade.py")
    assert_converged(rolled)
    versions = ssh_ok(
        fleet,
        hgx,
        "dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n' 'nvidia-fabricmanager*'",
    )
    installed = [line.rstrip() for line in versions.splitlines() if not line.endswith("un ")]
    assert installed == [f"nvidia-fabricmanager-550 {R550}-1 hi"]
    assert running_driver(fleet, hgx).splitlines()[0] == R550
    assert ssh_ok(fleet, hgx, "systemctl is-active nvidia-fabricmanager").strip() == "active"


# Canonical's R535-server build from Ubuntu's archive (restricted), headless, open modules:
# what gpufleet installs and holds, by name (the version is the archive's newest, read from the
# host's apt).
UBUNTU_ARCHIVE_DRIVER = (
    "libnvidia-cfg1-535-server",
    "libnvidia-common-535-server",
    "libnvidia-compute-535-server",
    "libnvidia-decode-535-server",
    "libnvidia-encode-535-server",
    "libnvidia-extra-535-server",
    "nvidia-compute-utils-535-server",
    "nvidia-headless-no-dkms-535-server-open",
    "nvidia-kernel-common-535-server",
    "nvidia-kernel-source-535-server-open",
    "nvidia-utils-535-server",
)
SIGNED_MODULES = "linux-modules-nvidia-535-server-open-generic"
REAL_NVIDIA_SMI_WITHOUT_MODULE = (
    Path(__file__).parents[1] / "fixtures" / "facts" / "nvidia-smi-real-535-server-no-module.txt"
)


def test_ubuntus_own_driver_installs_for_real_pinned_held_and_unchanged_on_a_re_run(
    fleet_factory: FleetFactory, repo_tree: RepoTree, tmp_path: Path
) -> None:
    fleet = fleet_factory(count=1, os_release="ubuntu20.04")
    (host,) = fleet.hosts
    present_gpus(fleet, host, [A100_SXM4_80GB] * 2)
    madison = ssh_ok(
        fleet, host, "apt-get update -q >/dev/null && apt-cache madison nvidia-utils-535-server"
    )
    version = madison.splitlines()[0].split("|")[1].strip()
    data = {
        **repo_data(repo_tree, "ubuntu20.04"),
        "gpu_verify": False,
        "nvidia_driver_source": "ubuntu",
        "nvidia_driver_version": version.split("-")[0],
        # The hosts run the build machine's kernel, not Ubuntu's.
        "nvidia_kernel_flavour": "generic",
    }
    inventory = fleet.write_inventory(tmp_path / "ubuntu-driver.py", data)

    first = run_deploy(fleet, inventory)
    # Installed, then stopped: the modules are for the generic kernels, which the host does not
    # run (a golden image built in a container stops the same way).
    assert first.returncode != 0, first.output[-6000:]
    assert "REBOOT REQUIRED (Canonical's signed modules are for the generic kernels" in (
        first.output
    )
    states = ssh_ok(
        fleet,
        host,
        "dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n' "
        "'*-535-server*' 'linux-modules-nvidia-*'",
    )
    installed = {
        line.split()[0]: line.split()[1:]
        for line in states.splitlines()
        if not line.endswith("un ") and not line.endswith("pn ")
    }
    for name in UBUNTU_ARCHIVE_DRIVER:
        assert installed[name] == [version, "hi"], states
    # The signed modules follow the kernels: installed, not held.
    assert installed[SIGNED_MODULES][1] == "ii", states
    module = ssh_ok(fleet, host, "find /lib/modules -name 'nvidia.ko*' -path '*generic*'")
    assert module.strip(), "no signed nvidia.ko for the generic kernel"

    second = run_deploy(fleet, inventory)
    assert second.changed() == {}
    assert "REBOOT REQUIRED" in second.output

    # What the real nvidia-smi says with no NVIDIA module loaded: the diagnosis fixture.
    smi = fleet.ssh(host, "nvidia-smi")
    assert smi.returncode == 9
    assert smi.stdout == REAL_NVIDIA_SMI_WITHOUT_MODULE.read_text()
