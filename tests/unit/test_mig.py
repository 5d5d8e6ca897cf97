"""
MIG layouts: the profile tables against NVIDIA's real -lgip/-lgipp outputs, the fit check, the
host read of the instances (real -lgi/-lci outputs), the data key, the operation and the
verification check.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, cast

import pytest

from gpufleet.deploys.gpu_host import mig_problems
from gpufleet.diagnosis.driver import check_mig_layouts
from gpufleet.diagnosis.evidence import Expectations, HostEvidence
from gpufleet.facts.gpu_host import GpuHostStateInfo
from gpufleet.facts.mig import COMPUTE_INSTANCES_MARKER, parse_mig_instances
from gpufleet.facts.nvidia import NvidiaSmiInfo
from gpufleet.operations.managed_files import absent
from gpufleet.operations.mig import layouts_applied
from gpufleet.settings import SettingsError, read_settings
from gpufleet.stack import mig
from tests.fakehost import FIXTURES, OperationCase, operation_commands

FACTS = FIXTURES / "facts"


class Data:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def dict(self) -> dict[str, Any]:
        return self.data


def lgip_rows(name: str) -> list[tuple[str, int, int]]:
    """(profile, id, total instances) of each first row of a real -lgip table."""
    rows = re.findall(
        r"^\|\s+\d+\s+MIG (\S+)\s+(\d+)\s+\d+/(\d+)\s", (FACTS / name).read_text(), re.MULTILINE
    )
    return [(profile, int(profile_id), int(total)) for profile, profile_id, total in rows]


def lgipp_rows(name: str) -> dict[int, tuple[tuple[int, ...], int]]:
    """Profile id -> (placements, size) of a real -lgipp output."""
    rows = re.findall(
        r"Profile ID\s+(\d+) Placements?\s*:\s*\{([\d,]+)\}:(\d+)", (FACTS / name).read_text()
    )
    return {
        int(profile_id): (tuple(int(start) for start in starts.split(",")), int(size))
        for profile_id, starts, size in rows
    }


@pytest.mark.parametrize(
    ("device_id", "lgip", "lgipp"),
    [
        (
            "20b1",
            "nvidia-smi-mig-lgip-a100-40gb-harvester.txt",
            "nvidia-smi-mig-lgipp-a100-40gb-mig-user-guide.txt",
        ),
        (
            "2330",
            "nvidia-smi-mig-lgip-h100-80gb-hbm3.txt",
            "nvidia-smi-mig-lgipp-h100-80gb-hbm3.txt",
        ),
    ],
)
def test_profile_tables_are_the_real_outputs(device_id: str, lgip: str, lgipp: str) -> None:
    profiles = mig.MIG_PROFILES[device_id]
    assert [(p.name, p.profile_id, p.instances) for p in profiles] == lgip_rows(lgip)
    placements = lgipp_rows(lgipp)
    assert {p.profile_id: (p.placements, p.size) for p in profiles} == placements


def test_the_a100_40gb_ids_share_one_table() -> None:
    assert mig.MIG_PROFILES["20b0"] is mig.MIG_PROFILES["20b1"] is mig.MIG_PROFILES["20f1"]


def test_creation_order_is_largest_first() -> None:
    assert mig.creation_order(["1g.5gb", "1g.5gb+me", "3g.20gb", "1g.10gb", "2g.10gb"]) == [
        "3g.20gb",
        "2g.10gb",
        "1g.10gb",
        "1g.5gb",
        "1g.5gb+me",
    ]


A100 = mig.MIG_PROFILES["20b1"]
H100 = mig.MIG_PROFILES["2330"]


def test_what_fits() -> None:
    assert mig.fits(["3g.20gb", "3g.20gb"], A100)
    assert mig.fits(["1g.10gb"] * 7, H100)
    # 3g + 2g + 1g + 1g fits an A100 40GB in any order it is written.
    assert mig.fits(["1g.5gb", "2g.10gb", "1g.5gb", "3g.20gb"], A100)
    assert mig.fits(["4g.20gb", "3g.20gb"], A100)
    assert not mig.fits(["3g.20gb", "3g.20gb", "1g.5gb"], A100)
    assert not mig.fits(["7g.40gb", "1g.5gb"], A100)
    assert not mig.fits(["4g.40gb", "4g.40gb"], H100)


def test_layout_problems_name_the_key_the_value_and_the_offer() -> None:
    assert mig.layout_problem("gpu_mig_layouts", 0, "A100", "20B1", ["4g.20gb", "3g.20gb"]) is None
    assert mig.layout_problem(
        "gpu_mig_layouts", 1, "NVIDIA A100-PCIE-40GB", "20b1", ["3g.40gb"]
    ) == (
        "gpu_mig_layouts[1] = ['3g.40gb']: GPU 1 (NVIDIA A100-PCIE-40GB) has no profile "
        "'3g.40gb'; it offers 1g.5gb (up to 7), 1g.5gb+me (up to 1), 1g.10gb (up to 4), "
        "2g.10gb (up to 3), 3g.20gb (up to 2), 4g.20gb (up to 1), 7g.40gb (up to 1)"
    )
    too_many = mig.layout_problem("gpu_mig_layouts", 0, "H100", "2330", ["1g.10gb+me"] * 2)
    assert too_many is not None and "cannot hold these instances together" in too_many
    assert "1g.10gb+me (up to 1)" in too_many
    not_fitting = mig.layout_problem("gpu_mig_layouts", 0, "H100", "2330", ["7g.80gb", "1g.10gb"])
    assert not_fitting is not None and "Insufficient Resources" in not_fitting
    assert mig.layout_problem("gpu_mig_layouts", 0, "Tesla T4", "1eb8", ["1g.5gb"]) == (
        "gpu_mig_layouts[0] = ['1g.5gb']: GPU 0 (Tesla T4) does not support MIG; leave it out"
    )
    no_table = mig.layout_problem(
        "gpu_mig_layouts", 2, "NVIDIA A100-SXM4-80GB", "20b2", ["1g.10gb"]
    )
    assert no_table == (
        "gpu_mig_layouts[2] = ['1g.10gb']: gpufleet has no MIG profile table for GPU 2 "
        "(NVIDIA A100-SXM4-80GB); it knows NVIDIA A100-PCIE-40GB, NVIDIA A100-SXM4-40GB, "
        "NVIDIA H100 80GB HBM3"
    )


def test_layouts_file() -> None:
    assert mig.layouts_file({1: [], 0: ["3g.40gb", "1g.10gb"]}) == "0 3g.40gb,1g.10gb\n1 disabled\n"


def real_instances(lgi: str, lci: str | None) -> mig.MigInstancesInfo:
    lines = (FACTS / lgi).read_text().splitlines()
    if lci is not None:
        lines += [COMPUTE_INSTANCES_MARKER, *(FACTS / lci).read_text().splitlines()]
    return parse_mig_instances(lines)


def test_instances_from_real_h100_tables() -> None:
    instances = real_instances(
        "nvidia-smi-mig-lgi-h100-80gb-hbm3-7x1g.10gb.txt",
        "nvidia-smi-mig-lci-h100-80gb-hbm3-7x1g.10gb.txt",
    )
    assert instances["gpu_instances"][0] == {
        "gpu": 0,
        "profile": "1g.10gb",
        "profile_id": 19,
        "instance_id": 7,
        "placement": "0:1",
    }
    assert [gi["instance_id"] for gi in instances["gpu_instances"]] == [7, 8, 9, 10, 11, 12, 13]
    assert instances["compute_instances"] == [(0, gi) for gi in range(7, 14)]
    assert mig.gpu_layouts(instances) == {0: ["1g.10gb"] * 7}


def test_gpu_instances_without_compute_instances_are_no_layout() -> None:
    # NVIDIA's A100 example after -cgi without -C: two GPU instances, no compute instance.
    instances = real_instances("nvidia-smi-mig-lgi-a100-40gb-mig-user-guide.txt", None)
    assert [gi["placement"] for gi in instances["gpu_instances"]] == ["4:4", "0:4"]
    assert mig.gpu_layouts(instances) == {}


def test_no_mig_device_reads_as_no_instances() -> None:
    lines = (FACTS / "nvidia-smi-mig-lgip-no-mig-devices-580.65.06.txt").read_text().splitlines()
    assert parse_mig_instances([*lines, COMPUTE_INSTANCES_MARKER, *lines]) == {
        "gpu_instances": [],
        "compute_instances": [],
    }


def test_unmet_layouts() -> None:
    wanted = {0: ["3g.40gb", "1g.10gb"], 1: [], 2: ["7g.80gb"]}
    modes = {0: "Enabled", 1: "Enabled", 2: "Disabled"}
    assert mig.unmet_layouts(wanted, modes, {0: ["1g.10gb", "3g.40gb"]}) == {
        1: "MIG mode is enabled, wanted disabled",
        2: "MIG mode is Disabled, wanted enabled",
    }
    assert mig.unmet_layouts(wanted, modes, {0: ["3g.40gb"]})[0] == (
        "instances 3g.40gb, wanted 3g.40gb, 1g.10gb"
    )
    assert mig.unmet_layouts({0: []}, {0: None}, {}) == {}


def test_the_data_key_is_checked() -> None:
    settings = read_settings(Data({"gpu_mig_layouts": {"0": ["1g.10gb", "3g.40gb"], 1: []}}))
    assert settings.gpu_mig_layouts == {0: ["1g.10gb", "3g.40gb"], 1: []}
    assert settings.mig_creation_layouts == {0: ["3g.40gb", "1g.10gb"], 1: []}
    with pytest.raises(SettingsError) as refused:
        read_settings(Data({"gpu_mig_layouts": {-1: [], 0: "3g.40gb", 1: ["MIG 3g.40gb"]}}))
    message = str(refused.value)
    assert "gpu_mig_layouts has the GPU index -1: use 0, 1, ..." in message
    assert "gpu_mig_layouts[0] = '3g.40gb' must be a list of MIG profile names" in message
    assert "gpu_mig_layouts[1] = ['MIG 3g.40gb'] must be a list" in message
    with pytest.raises(SettingsError, match=r"gpu_mig_layouts = \['3g.40gb'\] must map GPU"):
        read_settings(Data({"gpu_mig_layouts": ["3g.40gb"]}))


def smi(modes: list[str | None], processes: Sequence[tuple[int, int]] = ()) -> NvidiaSmiInfo:
    return {
        "driver_version": "580.126.16",
        "cuda_version": "13.0",
        "gpus": [
            {
                "index": index,
                "name": "NVIDIA H100 80GB HBM3",
                "uuid": f"GPU-{index}",
                "pci_bus_id": f"00000000:{7 + index:02X}:00.0",
                "memory_total_mib": 81559,
                "persistence_mode": True,
                "mig_mode": mode,
                "mig_mode_pending": mode,
            }
            for index, mode in enumerate(modes)
        ],
        "processes": [
            {"gpu_uuid": f"GPU-{gpu}", "pid": pid, "process_name": "python3", "used_memory_mib": 1}
            for gpu, pid in processes
        ],
        "error": None,
    }


def seven_small(gpu: int) -> mig.MigInstancesInfo:
    """Seven 1g.10gb with their compute instances on an H100."""
    return {
        "gpu_instances": [
            {
                "gpu": gpu,
                "profile": "1g.10gb",
                "profile_id": 19,
                "instance_id": 7 + n,
                "placement": f"{n}:1",
            }
            for n in range(7)
        ],
        "compute_instances": [(gpu, 7 + n) for n in range(7)],
    }


SEVEN_SMALL = seven_small(0)
NO_INSTANCES: mig.MigInstancesInfo = {"gpu_instances": [], "compute_instances": []}

OPERATION_CASES = [
    OperationCase(
        id="layout-in-place",
        args={"layouts": {0: ["1g.10gb"] * 7}},
        facts={"NvidiaSmi": smi(["Enabled"]), "MigInstances": SEVEN_SMALL},
        commands=[],
    ),
    OperationCase(
        id="layout-differs",
        args={"layouts": {0: ["3g.40gb", "3g.40gb"]}},
        facts={"NvidiaSmi": smi(["Enabled"]), "MigInstances": SEVEN_SMALL},
        commands=["/usr/local/sbin/gpufleet-mig-layouts"],
    ),
    OperationCase(
        id="mig-mode-off",
        args={"layouts": {0: ["7g.80gb"]}},
        facts={"NvidiaSmi": smi(["Disabled"]), "MigInstances": NO_INSTANCES},
        commands=["/usr/local/sbin/gpufleet-mig-layouts"],
    ),
    OperationCase(
        id="disabled-as-wanted",
        args={"layouts": {0: []}},
        facts={"NvidiaSmi": smi(["Disabled"]), "MigInstances": NO_INSTANCES},
        commands=[],
    ),
]


@pytest.mark.parametrize("case", OPERATION_CASES, ids=lambda case: case.id)
def test_layouts_applied(case: OperationCase) -> None:
    assert operation_commands(layouts_applied, case.args, case.facts).commands == case.commands


def test_absent_removes_only_what_exists() -> None:
    args = {"files": ["/etc/gpufleet/mig-layouts", "/etc/a"], "links": ["/etc/b"]}
    gone = operation_commands(absent, args, {"FileDigests": {}, "SymlinkTargets": {}})
    assert gone.commands == []
    present = operation_commands(
        absent,
        args,
        {
            "FileDigests": {"/etc/gpufleet/mig-layouts": "0" * 64},
            "SymlinkTargets": {"/etc/b": "/x"},
        },
    )
    assert present.commands == ["rm -f /etc/b /etc/gpufleet/mig-layouts"]


def host_state(
    modes: list[str | None], processes: Sequence[tuple[int, int]] = ()
) -> GpuHostStateInfo:
    """A Tesla T4 (GPU 0, on the lowest bus) and an H100 for each further mode."""
    h100s = [
        {"address": f"0000:{7 + index:02x}:00.0", "class_code": "0302", "device_id": "2330"}
        for index in range(len(modes) - 1)
    ]
    t4 = {"address": "0000:03:00.0", "class_code": "0302", "device_id": "1eb8"}
    return cast(
        GpuHostStateInfo,
        {
            # Listed out of bus order: nvidia-smi's indexes follow the bus.
            "pci_devices": [*reversed(h100s), t4],
            "nvidia_smi": smi(modes, processes),
            "mig_instances": SEVEN_SMALL,
        },
    )


def test_the_deploy_refuses_gpus_it_cannot_lay_out() -> None:
    settings = read_settings(Data({"gpu_mig_layouts": {0: ["1g.10gb"], 1: ["3g.40gb"], 3: []}}))
    assert mig_problems(settings, host_state([None, "Enabled", "Enabled"])) == [
        "gpu_mig_layouts[0] = ['1g.10gb']: GPU 0 (Tesla T4) does not support MIG; leave it out",
        "gpu_mig_layouts[3]: the host has 3 GPU(s) on its PCI bus (indexes 0 to 2); leave GPU 3 "
        "out",
    ]


def test_the_deploy_refuses_a_layout_change_on_a_gpu_in_use() -> None:
    settings = read_settings(Data({"gpu_mig_layouts": {1: ["1g.10gb"] * 7, 2: ["7g.80gb"]}}))
    # GPU 1 holds the seven 1g.10gb already: its job may run on.
    state = host_state([None, "Enabled", "Enabled"], processes=[(1, 4242), (2, 4343)])
    state["mig_instances"] = seven_small(1)
    assert mig_problems(settings, state) == [
        "gpu_mig_layouts[2]: GPU 2 runs python3 (pid 4343) and its layout would change "
        "(instances none, wanted 7g.80gb); re-run when nothing runs on it"
    ]


def test_verification_checks_the_layouts() -> None:
    expectations = Expectations(
        "580.126.16", "11.2", "8.1", mig_layouts={0: ["1g.10gb"] * 7, 1: []}
    )
    evidence: HostEvidence = {"host": "gpu-01", "mig_instances": SEVEN_SMALL}
    passed = check_mig_layouts(smi(["Enabled", "Disabled"]), evidence, expectations)
    assert passed["passed"] is True
    assert passed["evidence"] == "GPU 0: " + ", ".join(["1g.10gb"] * 7) + "; GPU 1: MIG Disabled"
    evidence["mig_instances"] = NO_INSTANCES
    failed = check_mig_layouts(smi(["Enabled", "Enabled"]), evidence, expectations)
    assert failed["passed"] is False
    assert failed["problem"] == (
        "GPU 0: instances none, wanted "
        + ", ".join(["1g.10gb"] * 7)
        + "; GPU 1: MIG mode is enabled, wanted disabled"
    )
    unread = check_mig_layouts(smi(["Enabled"]), {"host": "gpu-01"}, expectations)
    assert unread["passed"] is None
