"""The stand-in lspci prints the stand-in bus in real lspci's formats."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from testbed.standin_gpus import (
    A100_NVSWITCH,
    A100_SXM4_80GB,
    LSPCI_PAYLOAD,
    TESLA_T4,
    standin_config,
)


def lspci(tmp_path: Path, config: dict[str, list[dict[str, object]]], *arguments: str) -> list[str]:
    config_path = tmp_path / "gpus.json"
    config_path.write_text(json.dumps(config))
    result = subprocess.run(
        [str(LSPCI_PAYLOAD), *arguments],
        env={**os.environ, "NVIDIA_STANDIN_CONFIG": str(config_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.splitlines()


@pytest.fixture
def hgx_a100() -> dict[str, list[dict[str, object]]]:
    return standin_config([A100_SXM4_80GB] * 2, [A100_NVSWITCH] * 2)


def test_numeric_nvidia_devices_with_domains(
    tmp_path: Path, hgx_a100: dict[str, list[dict[str, object]]]
) -> None:
    # gpufleet's query: what `lspci -n -D -d 10de:` prints on an HGX A100 board.
    assert lspci(tmp_path, hgx_a100, "-n", "-D", "-d", "10de:") == [
        "0000:07:00.0 0302: 10de:20b2 (rev a1)",
        "0000:0f:00.0 0302: 10de:20b2 (rev a1)",
        "0000:c4:00.0 0680: 10de:1af1 (rev a1)",
        "0000:c5:00.0 0680: 10de:1af1 (rev a1)",
    ]


def test_class_filter_lists_the_nvswitches(
    tmp_path: Path, hgx_a100: dict[str, list[dict[str, object]]]
) -> None:
    assert lspci(tmp_path, hgx_a100, "-d", "10de::0680") == [
        "c4:00.0 Bridge: NVIDIA Corporation Device 1af1 (rev a1)",
        "c5:00.0 Bridge: NVIDIA Corporation Device 1af1 (rev a1)",
    ]
    assert lspci(tmp_path, hgx_a100, "-nn", "-s", "0f:00.0") == [
        "0f:00.0 3D controller [0302]: NVIDIA Corporation Device [10de:20b2] (rev a1)"
    ]


def test_names_without_n_include_the_hosts_own_devices(tmp_path: Path) -> None:
    assert lspci(tmp_path, standin_config([TESLA_T4])) == [
        "00:00.0 Host bridge: Advanced Micro Devices, Inc. [AMD] Starship/Matisse Root Complex",
        "07:00.0 3D controller: NVIDIA Corporation Device 1eb8 (rev a1)",
        "e1:00.0 Ethernet controller: Intel Corporation I210 Gigabit Network Connection (rev 03)",
    ]


def test_bad_options_fail_as_lspci_does(
    tmp_path: Path, hgx_a100: dict[str, list[dict[str, object]]]
) -> None:
    for arguments, message in (
        (["-z"], "lspci: invalid option -- 'z'\n"),
        (["-d", "10de"], "lspci: -d: At least two fields must be given\n"),
        (["-d", "zz:"], "lspci: -d: Invalid vendor ID\n"),
        (["-s", "20"], "lspci: -s: Invalid slot number\n"),
    ):
        with pytest.raises(subprocess.CalledProcessError) as failure:
            lspci(tmp_path, hgx_a100, *arguments)
        assert failure.value.returncode == 1
        assert failure.value.stderr.startswith(message)


def test_an_hgx_board_has_eight_gpu_buses() -> None:
    config = standin_config([A100_SXM4_80GB] * 8)
    assert config["gpus"][-1]["bus_id"] == "00000000:BD:00.0"
    with pytest.raises(ValueError):
        standin_config([A100_SXM4_80GB] * 9)
