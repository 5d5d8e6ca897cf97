"""
MIG layouts on a real host with stand-in GPUs (an H100, whose MIG mode the driver forgets at
reboot, and an A100 40GB, which keeps it in its InfoROM): refused when a GPU cannot hold one or
runs a job, made, verified, kept across a real reboot by the boot unit, repaired after an
interrupted change, and let go of.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed.fleet import Fleet, FleetFactory, TestHost
from testbed.repos import RepoTree
from testbed.runs import repo_data, run_deploy
from testbed.standin_gpus import A100_PCIE_40GB, H100_80GB_HBM3, STANDIN_DIR, present_gpus
from tests.e2e.test_gpu_host_deploy import SNAPSHOT, assert_converged, ssh_ok

pytestmark = pytest.mark.e2e

LAYOUTS = {0: ["1g.10gb", "3g.40gb", "1g.10gb", "2g.20gb"], 1: ["3g.20gb", "3g.20gb"]}
# What `nvidia-smi mig -lgi` lists for LAYOUTS, as (GPU, profile) sorted.
INSTANCES = [
    ("0", "1g.10gb"),
    ("0", "1g.10gb"),
    ("0", "2g.20gb"),
    ("0", "3g.40gb"),
    ("1", "3g.20gb"),
    ("1", "3g.20gb"),
]


def gpu_instances(fleet: Fleet, host: TestHost) -> list[tuple[str, str]]:
    """(GPU, profile) of each row of the host's `nvidia-smi mig -lgi`, sorted."""
    rows = ssh_ok(fleet, host, "nvidia-smi mig -lgi").splitlines()
    cells = [row.strip("|").split() for row in rows if " MIG " in row]
    return sorted((cell[0], cell[2]) for cell in cells)


def compute_instance_count(fleet: Fleet, host: TestHost) -> int:
    return sum(" MIG " in row for row in ssh_ok(fleet, host, "nvidia-smi mig -lci").splitlines())


def mig_modes(fleet: Fleet, host: TestHost) -> str:
    query = "nvidia-smi --query-gpu=index,mig.mode.current --format=csv,noheader"
    return ssh_ok(fleet, host, query)


def monotonic(fleet: Fleet, host: TestHost, unit: str, stamp: str) -> int:
    value = ssh_ok(fleet, host, f"systemctl show --value -p {stamp} {unit}").strip()
    return int(value)


def test_mig_layouts_survive_a_reboot(
    fleet_factory: FleetFactory, repo_tree: RepoTree, tmp_path: Path
) -> None:
    fleet = fleet_factory(count=1)
    (host,) = fleet.hosts
    present_gpus(fleet, host, [H100_80GB_HBM3, A100_PCIE_40GB])
    data = {
        **repo_data(repo_tree, fleet.os_release),
        "nvidia_driver_branch": "535",
        # TensorFlow 2.9 predates Hopper: its kernels would run JIT-compiled at best.
        "gpu_allow_unsupported_framework": True,
        "gpu_verify": False,
        "gpu_results_dir": str(tmp_path / "results"),
    }

    # A profile the H100 does not offer: refused with its offer, the host unchanged.
    before = ssh_ok(fleet, host, SNAPSHOT)
    wrong = fleet.write_inventory(
        tmp_path / "wrong.py", {**data, "gpu_mig_layouts": {0: ["3g.20gb"]}}
    )
    refused = run_deploy(fleet, wrong)
    assert refused.returncode != 0
    assert (
        "gpu_mig_layouts[0] = ['3g.20gb']: GPU 0 (NVIDIA H100 80GB HBM3) has no profile "
        "'3g.20gb'; it offers 1g.10gb (up to 7), 1g.10gb+me (up to 1), 1g.20gb (up to 4), "
        "2g.20gb (up to 3), 3g.40gb (up to 2), 4g.40gb (up to 1), 7g.80gb (up to 1)"
    ) in refused.output
    assert ssh_ok(fleet, host, SNAPSHOT) == before

    inventory = fleet.write_inventory(tmp_path / "mig.py", {**data, "gpu_mig_layouts": LAYOUTS})
    assert_converged(run_deploy(fleet, inventory))
    assert mig_modes(fleet, host) == "0, Enabled\n1, Enabled\n"
    assert gpu_instances(fleet, host) == INSTANCES
    assert compute_instance_count(fleet, host) == 6
    assert ssh_ok(fleet, host, "cat /etc/gpufleet/mig-layouts") == (
        "0 3g.40gb,2g.20gb,1g.10gb,1g.10gb\n1 3g.20gb,3g.20gb\n"
    )
    assert ssh_ok(fleet, host, "systemctl is-enabled gpufleet-mig-layouts.service") == "enabled\n"
    again = run_deploy(fleet, inventory)
    assert_converged(again)
    assert again.changed() == {}

    # The verification checks the layouts (smoke test aside: no image on this host).
    checked = fleet.write_inventory(
        tmp_path / "verify.py", {**data, "gpu_mig_layouts": LAYOUTS, "gpu_smoke_test": False}
    )
    run_deploy(fleet, checked, deploy="deploys/verify.py")
    result = json.loads((tmp_path / "results" / f"{host.address}.json").read_text())
    (driver,) = [layer for layer in result["verdict"]["layers"] if layer["layer"] == "driver"]
    (mig_check,) = [check for check in driver["checks"] if check["name"] == "MIG layouts"]
    assert mig_check["passed"] is True, mig_check
    assert mig_check["evidence"] == (
        "GPU 0: 1g.10gb, 1g.10gb, 2g.20gb, 3g.40gb; GPU 1: 3g.20gb, 3g.20gb"
    )

    # A real reboot: the instances are gone, and the H100's MIG mode with them; the boot unit
    # makes them again after nvidia-persistenced and before docker starts.
    fleet.reboot(host)
    assert mig_modes(fleet, host) == "0, Enabled\n1, Enabled\n"
    assert gpu_instances(fleet, host) == INSTANCES
    assert compute_instance_count(fleet, host) == 6
    unit = "gpufleet-mig-layouts.service"
    made = monotonic(fleet, host, unit, "ExecMainExitTimestampMonotonic")
    assert monotonic(fleet, host, unit, "ExecMainStartTimestampMonotonic") > monotonic(
        fleet, host, "nvidia-persistenced.service", "ExecMainStartTimestampMonotonic"
    )
    assert 0 < made < monotonic(fleet, host, "docker.service", "ExecMainStartTimestampMonotonic")
    assert run_deploy(fleet, inventory).changed() == {}

    # A change interrupted after -dgi and part of -cgi: the next run finishes it.
    ssh_ok(fleet, host, "nvidia-smi mig -i 1 -dci && nvidia-smi mig -i 1 -dgi && "
                        "nvidia-smi mig -i 1 -cgi 3g.20gb")  # fmt: skip
    assert_converged(run_deploy(fleet, inventory))
    assert gpu_instances(fleet, host) == INSTANCES
    assert compute_instance_count(fleet, host) == 6

    # A job on the A100 and a new layout for it: refused, naming the job; the GPU untouched.
    config_path = f"{STANDIN_DIR}/gpus.json"
    config = json.loads(ssh_ok(fleet, host, f"cat {config_path}"))
    config["processes"] = [
        {"gpu": 1, "pid": 4242, "process_name": "python3", "used_memory_mib": 300}
    ]
    ssh_ok(fleet, host, f"echo '{json.dumps(config)}' > {config_path}")
    changed = fleet.write_inventory(
        tmp_path / "changed.py", {**data, "gpu_mig_layouts": {**LAYOUTS, 1: ["7g.40gb"]}}
    )
    busy = run_deploy(fleet, changed)
    assert busy.returncode != 0
    assert (
        "gpu_mig_layouts[1]: GPU 1 runs python3 (pid 4242) and its layout would change "
        "(instances 3g.20gb, 3g.20gb, wanted 7g.40gb); re-run when nothing runs on it"
    ) in busy.output
    assert gpu_instances(fleet, host) == INSTANCES

    # Without the key gpufleet stops keeping layouts: unit and file go, the GPUs stay as they are.
    released = fleet.write_inventory(tmp_path / "released.py", data)
    assert_converged(run_deploy(fleet, released))
    for path in (
        "/etc/gpufleet/mig-layouts",
        "/usr/local/sbin/gpufleet-mig-layouts",
        "/etc/systemd/system/gpufleet-mig-layouts.service",
        "/etc/systemd/system/multi-user.target.wants/gpufleet-mig-layouts.service",
    ):
        assert fleet.ssh(host, f"test -e {path} || test -L {path}").returncode == 1, path
    assert gpu_instances(fleet, host) == INSTANCES
