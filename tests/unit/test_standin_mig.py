"""The stand-in nvidia-smi's MIG commands print what real GPUs printed, and keep MIG state as real
GPUs keep it across a reboot (the A100's mode in its InfoROM; the H100's mode and all instances
nowhere).

Expected outputs are the real samples in tests/fixtures/facts/ (their .source.txt say where each
comes from), compared byte for byte where the stand-in's GPUs, buses and instance ids coincide.
The stand-in runs from its template, as the stand-in repository builds it, on a gpus.json of its
own; a test host's reboot is its tmpfs state directory going away.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import pytest

from testbed.standin_gpus import (
    A100_PCIE_40GB,
    H100_80GB_HBM3,
    TESLA_T4,
    StandinGpu,
    standin_config,
)
from testbed.standin_repo import payload_text, program
from tests.unit.test_standin_repo import run_standin

FACTS = Path(__file__).resolve().parents[1] / "fixtures" / "facts"

# The real -lgi and -lci of an H100 80GB HBM3 with two 1g.10gb instances (ids 11 and 13) on driver
# 580.173.02: starkdrift/prickle-exporter internal/collector/gpu/testdata/h100-mig-20260729/nvidia/
# mig-gi.txt and mig-ci.txt @ 1bfc0d7c187cfe154af8ad5c993a177840e8187a. R580's -lgi and -lgip
# are two columns wider than the fixtures' (older drivers); -lci is unchanged.
REAL_580_LGI = """\
+---------------------------------------------------------+
| GPU instances:                                          |
| GPU   Name               Profile  Instance   Placement  |
|                            ID       ID       Start:Size |
|=========================================================|
|   0  MIG 1g.10gb           19       11          4:1     |
+---------------------------------------------------------+
|   0  MIG 1g.10gb           19       13          6:1     |
+---------------------------------------------------------+
"""
REAL_580_LCI = """\
+--------------------------------------------------------------------+
| Compute instances:                                                 |
| GPU     GPU       Name             Profile   Instance   Placement  |
|       Instance                       ID        ID       Start:Size |
|         ID                                                         |
|====================================================================|
|   0     11       MIG 1g.10gb          0         0          0:1     |
+--------------------------------------------------------------------+
|   0     13       MIG 1g.10gb          0         0          0:1     |
+--------------------------------------------------------------------+
"""
# The first rows of the same H100's -lgip with those two instances (mig-profiles.txt).
REAL_580_LGIP_HEAD = """\
+-------------------------------------------------------------------------------+
| GPU instance profiles:                                                        |
| GPU   Name               ID    Instances   Memory     P2P    SM    DEC   ENC  |
|                                Free/Total   GiB              CE    JPEG  OFA  |
|===============================================================================|
|   0  MIG 1g.10gb         19     5/7        9.75       No     16     1     0   |
|                                                               1     1     0   |
+-------------------------------------------------------------------------------+
|   0  MIG 1g.10gb+me      20     1/1        9.75       No     16     1     0   |
|                                                               1     1     1   |
+-------------------------------------------------------------------------------+
"""
# A row of -lgi (both widths): GPU, name, profile id, instance id, placement.
LGI_ROW = re.compile(r"\|\s+(\d+)  MIG (\S+)\s+(\d+)\s+(\d+)\s+(\d+:\d+)\s+\|")


def fact(name: str) -> str:
    return (FACTS / name).read_text()


def config(gpus: Sequence[StandinGpu], *buses: str, **extra: object) -> dict[str, object]:
    """gpus.json with ``gpus`` on the given buses (those of the real samples compared with)."""
    bus = standin_config(gpus)
    for gpu, bus_id in zip(bus["gpus"], buses, strict=True):
        gpu["bus_id"] = bus_id
    return {"mode": "ok", **bus, **extra}


class Host:
    """A test host's nvidia-smi on a stand-in bus. ``root``/state stands for the host's tmpfs
    (a reboot removes it); the InfoROM directory is NVIDIA_STANDIN_INFOROM_DIR's, which stays."""

    def __init__(self, program_path: Path, root: Path, bus: dict[str, object]) -> None:
        self.program = program_path
        self.root = root
        self.bus = bus

    def run(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return run_standin(self.program, self.root, self.bus, *arguments)

    def out(self, *arguments: str) -> str:
        result = self.run(*arguments)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def reboot(self) -> None:
        shutil.rmtree(self.root / "state", ignore_errors=True)


def build(tmp_path: Path, driver: str, cuda: str) -> Path:
    """The stand-in nvidia-smi of ``driver``, as the stand-in repository's packages carry it."""
    payload = program(
        "nvidia-smi",
        DRIVER_VERSION=driver,
        CUDA_VERSION=cuda,
        LOADED_MODULE=payload_text("loaded-module"),
    )
    path = tmp_path / f"nvidia-smi-{driver}"
    path.write_bytes(payload.content)
    path.chmod(payload.mode)
    return path


@pytest.fixture
def smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NVIDIA_STANDIN_INFOROM_DIR", str(tmp_path / "inforom"))
    return build(tmp_path, "535.54.03", "12.2")


def test_profile_tables_are_the_real_ones(smi: Path, tmp_path: Path) -> None:
    h100 = Host(smi, tmp_path, config([H100_80GB_HBM3], "00000000:16:00.0"))
    assert h100.out("-i", "0", "-mig", "1") == fact("nvidia-smi-mig1-enabled-h100-80gb-hbm3.txt")
    assert h100.out("mig", "-i", "0", "-lgip") == fact("nvidia-smi-mig-lgip-h100-80gb-hbm3.txt")
    assert h100.out("mig", "-lgipp") == fact("nvidia-smi-mig-lgipp-h100-80gb-hbm3.txt")
    a100 = Host(smi, tmp_path, config([A100_PCIE_40GB], "00000000:61:00.0"))
    assert a100.out("mig", "-lgip") == fact("nvidia-smi-mig-lgip-a100-40gb-harvester.txt")
    assert a100.out("mig", "-lgipp") == fact("nvidia-smi-mig-lgipp-a100-40gb-mig-user-guide.txt")


def test_seven_1g_instances_on_an_h100(smi: Path, tmp_path: Path) -> None:
    host = Host(smi, tmp_path, config([H100_80GB_HBM3], "00000000:16:00.0"))
    host.out("-mig", "1")
    created = host.out("mig", "-i", "0", "-cgi", ",".join(["19"] * 7), "-C")
    # The driver's own order: ids 13, 11, 12, 7, 8, 9, 10.
    assert created == fact("nvidia-smi-mig-cgi-7x19-C-h100-80gb-hbm3.txt")
    assert host.out("mig", "-i", "0", "-lgi") == fact(
        "nvidia-smi-mig-lgi-h100-80gb-hbm3-7x1g.10gb.txt"
    )
    assert host.out("mig", "-lci") == fact("nvidia-smi-mig-lci-h100-80gb-hbm3-7x1g.10gb.txt")
    free = re.search(r"MIG 1g\.10gb\s+19\s+(\d/\d)", host.out("mig", "-lgip"))
    assert free is not None and free.group(1) == "0/7"
    # -L as the real one (GPU 0 of eight H100s, each in seven 1g.10gb), UUIDs aside.
    listed = host.out("-L")
    real = "".join(fact("nvidia-smi-L-mig-h100-80gb-hbm3-x8-1g.10gb.txt").splitlines(True)[:8])
    uuid = re.compile(r"(GPU|MIG)-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}")
    assert uuid.sub(r"\1-X", listed) == uuid.sub(r"\1-X", real)
    assert len(set(re.findall(r"MIG-[0-9a-f-]{36}", listed))) == 7
    assert host.out("-L") == listed
    assert host.out("mig", "-dci") == fact("nvidia-smi-mig-dci-h100-80gb-hbm3-7x1g.10gb.txt")
    assert host.out("mig", "-i", "0", "-dgi") == fact(
        "nvidia-smi-mig-dgi-h100-80gb-hbm3-7x1g.10gb.txt"
    )
    assert host.out("-i", "0", "-mig", "0") == fact("nvidia-smi-mig0-disabled-h100-80gb-hbm3.txt")


def test_cgi_without_i_uses_the_gpus_in_mig_mode(smi: Path, tmp_path: Path) -> None:
    # The real session: six A100-PCIE-40GB, MIG enabled on GPU 2 (00000000:61:00.0) only.
    buses = ("00000000:01:00.0", "00000000:25:00.0", "00000000:61:00.0")
    host = Host(smi, tmp_path, config([A100_PCIE_40GB] * 3, *buses))
    assert host.out("-i", "2", "-mig", "1") == fact(
        "nvidia-smi-mig1-enabled-a100-pcie-40gb-460.91.03.txt"
    )
    created = host.out("mig", "-cgi", "9,3g.20gb", "-C")
    assert created == fact("nvidia-smi-mig-cgi-9-3g.20gb-C-a100-pcie-40gb-460.91.03.txt")
    # R460's -lgi is narrower; the rows hold the same instances.
    real_rows = LGI_ROW.findall(fact("nvidia-smi-mig-lgi-a100-pcie-40gb-460.91.03.txt"))
    assert (
        LGI_ROW.findall(host.out("mig", "-lgi"))
        == real_rows
        == [
            ("2", "3g.20gb", "9", "1", "0:4"),
            ("2", "3g.20gb", "9", "2", "4:4"),
        ]
    )
    assert host.out("mig", "-dci", "-i", "2") == fact(
        "nvidia-smi-mig-dci-a100-pcie-40gb-460.91.03.txt"
    )
    assert host.out("mig", "-dgi", "-i", "2") == fact(
        "nvidia-smi-mig-dgi-a100-pcie-40gb-460.91.03.txt"
    )
    assert host.out("-i", "2", "-mig", "0") == fact(
        "nvidia-smi-mig0-disabled-a100-pcie-40gb-460.91.03.txt"
    )


def test_a_layout_that_does_not_fit(smi: Path, tmp_path: Path) -> None:
    host = Host(smi, tmp_path, config([A100_PCIE_40GB], "00000000:36:00.0"))
    host.out("-mig", "1")
    result = host.run("mig", "-cgi", "19,19,14,9")
    assert result.stdout == fact("nvidia-smi-mig-cgi-insufficient-resources-mig-user-guide.txt")
    assert result.returncode == 23
    # The instances made before the one that did not fit stay.
    assert [row[3] for row in LGI_ROW.findall(host.out("mig", "-lgi"))] == ["11", "13", "3"]
    unknown = host.run("mig", "-cgi", "7g.80gb")
    assert unknown.stdout.splitlines() == [
        "Unable to create a GPU instance on GPU  0 using profile 7g.80gb: Invalid Argument",
        "Failed to create GPU instances: Invalid Argument",
    ]
    # The MIG user guide's order that fits: 3g.20gb first.
    host.out("mig", "-dgi")
    assert host.out("mig", "-cgi", "9,19,14,19").splitlines() == [
        "Successfully created GPU instance ID  2 on GPU  0 using profile MIG 3g.20gb (ID  9)",
        "Successfully created GPU instance ID  7 on GPU  0 using profile MIG 1g.5gb (ID 19)",
        "Successfully created GPU instance ID  4 on GPU  0 using profile MIG 2g.10gb (ID 14)",
        "Successfully created GPU instance ID  8 on GPU  0 using profile MIG 1g.5gb (ID 19)",
    ]


def test_a_reboot_keeps_the_a100_mode_only(smi: Path, tmp_path: Path) -> None:
    host = Host(
        smi,
        tmp_path,
        config([A100_PCIE_40GB, H100_80GB_HBM3], "00000000:07:00.0", "00000000:0F:00.0"),
    )
    query = ("--query-gpu=index,mig.mode.current,mig.mode.pending", "--format=csv,noheader")
    assert host.out(*query) == "0, Disabled, Disabled\n1, Disabled, Disabled\n"
    host.out("-mig", "1")
    host.out("mig", "-cgi", "1g.5gb", "-C", "-i", "0")
    host.out("mig", "-cgi", "1g.10gb", "-C", "-i", "1")
    assert host.out(*query) == "0, Enabled, Enabled\n1, Enabled, Enabled\n"
    host.reboot()
    assert host.out(*query) == "0, Enabled, Enabled\n1, Disabled, Disabled\n"
    lost = host.run("mig", "-lgi")
    assert (lost.returncode, lost.stdout) == (6, "No GPU instances found: Not Found\n")
    assert host.run("mig", "-i", "1", "-lgi").stdout == "No MIG-enabled devices found.\n"
    assert host.out("-L").count("MIG ") == 0
    # Disabled on the A100 stays disabled too.
    host.out("-i", "0", "-mig", "0")
    host.reboot()
    assert host.out(*query) == "0, Disabled, Disabled\n1, Disabled, Disabled\n"


def test_a_gpu_in_use(smi: Path, tmp_path: Path) -> None:
    process = {"pid": 4242, "process_name": "python3", "used_memory_mib": 300}
    host = Host(
        smi,
        tmp_path,
        config(
            [A100_PCIE_40GB, H100_80GB_HBM3],
            "00000000:0B:00.0",
            "00000000:16:00.0",
            processes=[{"gpu": 0, **process}, {"gpu": 1, **process}],
        ),
    )
    pending = host.run("-i", "0", "--multi-instance-gpu=1")
    assert (pending.returncode, pending.stdout) == (
        0,
        fact("nvidia-smi-mig1-pending-in-use-a30-535.183.01.txt"),
    )
    query = ("--query-gpu=mig.mode.current,mig.mode.pending", "--format=csv,noheader")
    assert host.out("-i", "0", *query) == "Disabled, Enabled\n"
    table = host.out("-i", "0")
    assert re.search(r"\|\s+Enabled\* \|$", table, re.MULTILINE)
    # Hopper switches without a reset, and so cannot wait for one.
    refused = host.run("-i", "1", "-mig", "1")
    assert (refused.returncode, refused.stdout.splitlines()) == (
        19,
        [
            "Unable to enable MIG Mode for GPU 00000000:16:00.0: In use by another client",
            "Terminating early due to previous errors.",
        ],
    )
    host.reboot()
    assert host.out("-i", "0", *query) == "Enabled, Enabled\n"
    busy = host.run("mig", "-i", "0", "-cgi", "9")
    assert (busy.returncode, busy.stdout.splitlines()) == (
        19,
        [
            "Unable to create a GPU instance on GPU  0 using profile 9: In use by another client",
            "Failed to create GPU instances: In use by another client",
        ],
    )


def test_destroying_an_instance_in_use(smi: Path, tmp_path: Path) -> None:
    host = Host(smi, tmp_path, config([H100_80GB_HBM3], "00000000:16:00.0"))
    host.out("-mig", "1")
    host.out("mig", "-cgi", "3g.40gb", "-C")
    in_use = host.run("mig", "-dgi")
    assert (in_use.returncode, in_use.stdout.splitlines()) == (
        19,
        [
            "Unable to destroy GPU instance ID  2 from GPU  0: In use by another client",
            "Failed to destroy GPU instances: In use by another client",
        ],
    )
    host.bus["processes"] = [
        {"gpu": 0, "pid": 4242, "process_name": "python3", "used_memory_mib": 300}
    ]
    busy = host.run("mig", "-dci")
    # NVIDIA/DCGM#95's lines, in nvidia-smi's capitals.
    assert (busy.returncode, busy.stdout.splitlines()) == (
        19,
        [
            "Unable to destroy compute instance ID  0 from GPU  0 GPU instance ID  2: "
            "In use by another client",
            "Failed to destroy compute instances: In use by another client",
        ],
    )
    refused = host.run("-mig", "0")
    assert refused.stdout.splitlines()[0] == (
        "Unable to disable MIG Mode for GPU 00000000:16:00.0: In use by another client"
    )


def test_a_gpu_without_mig(smi: Path, tmp_path: Path) -> None:
    host = Host(smi, tmp_path, config([TESLA_T4], "00000000:18:00.0"))
    enabled = host.run("-mig", "1")
    assert (enabled.returncode, enabled.stdout) == (
        0,
        fact("nvidia-smi-mig1-not-supported-rtx-a5000.txt"),
    )
    profiles = host.run("mig", "-lgip")
    assert (profiles.returncode, profiles.stdout) == (
        6,
        fact("nvidia-smi-mig-lgip-no-mig-devices-580.65.06.txt"),
    )
    query = host.out("--query-gpu=name,mig.mode.current,mig.mode.pending", "--format=csv,noheader")
    assert query == "Tesla T4, [N/A], [N/A]\n"


def test_xml_and_table_of_a_gpu_in_mig_mode(smi: Path, tmp_path: Path) -> None:
    host = Host(smi, tmp_path, config([A100_PCIE_40GB], "00000000:01:00.0"))
    log = ET.fromstring(host.out("-q", "-x"))
    assert log.findtext("gpu/mig_mode/current_mig") == "Disabled"
    assert log.findtext("gpu/mig_devices") == "None"
    host.out("-mig", "1")
    host.out("mig", "-cgi", "3g.20gb,2g.10gb", "-C")
    log = ET.fromstring(host.out("-q", "-x"))
    assert log.findtext("gpu/mig_mode/pending_mig") == "Enabled"
    devices = [
        (
            device.findtext("index"),
            device.findtext("gpu_instance_id"),
            device.findtext("fb_memory_usage/total"),
        )
        for device in log.iterfind("gpu/mig_devices/mig_device")
    ]
    # 3g.20gb at 4:4 (id 2), 2g.10gb at 0:2 (id 3); devices in instance id order.
    assert devices == [("0", "2", "20096 MiB"), ("1", "3", "9984 MiB")]
    assert (
        log.findtext("gpu/mig_devices/mig_device/device_attributes/shared/multiprocessor_count")
        == "42"
    )
    rows = host.out().splitlines()[8:11]
    # As real MIG-mode tables show the GPU: ECC mode "On", no GPU-Util, "Enabled".
    assert rows[0].endswith("| 00000000:01:00.0 Off |                   On |")
    assert rows[1].endswith("|     N/A      Default |")
    assert rows[2].endswith("|              Enabled |")


def test_r580_tables_are_wider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NVIDIA_STANDIN_INFOROM_DIR", str(tmp_path / "inforom"))
    smi = build(tmp_path, "580.65.06", "13.0")
    host = Host(smi, tmp_path, config([H100_80GB_HBM3], "00000000:00:09.0"))
    host.out("-mig", "1")
    host.out("mig", "-cgi", "1g.10gb,1g.10gb", "-C")
    assert host.out("mig", "-lgi") == REAL_580_LGI
    assert host.out("mig", "-lci") == REAL_580_LCI
    assert host.out("mig", "-lgip").startswith(REAL_580_LGIP_HEAD)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run it as another user")
def test_mig_changes_need_root(tmp_path: Path) -> None:
    # Somewhere another user can read: pytest's tmp_path is root's only.
    with tempfile.TemporaryDirectory() as shared:
        root = Path(shared)
        root.chmod(0o755)
        smi = build(root, "535.54.03", "12.2")
        (root / "gpus.json").write_text(json.dumps(config([H100_80GB_HBM3], "00000000:16:00.0")))
        as_nobody = subprocess.run(
            [str(smi), "-mig", "1"],
            env={
                **os.environ,
                "NVIDIA_STANDIN_CONFIG": str(root / "gpus.json"),
                "NVIDIA_STANDIN_STATE_DIR": str(root / "state"),
                "NVIDIA_STANDIN_INFOROM_DIR": str(root / "inforom"),
            },
            user="nobody",
            capture_output=True,
            text=True,
            check=False,
        )
    assert (as_nobody.returncode, as_nobody.stdout.splitlines()) == (
        4,
        [
            "Unable to enable MIG Mode for GPU 00000000:16:00.0: Insufficient Permissions",
            "Terminating early due to previous errors.",
        ],
    )
