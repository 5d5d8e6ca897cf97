from __future__ import annotations

import pytest

from gpufleet.facts.nvidia import (
    NVIDIA_SMI_EXIT_MARKER,
    NvidiaKernel,
    NvidiaSmi,
    parse_nvidia_kernel,
    parse_nvidia_smi_output,
    parse_nvidia_smi_xml,
)
from tests.unit.test_facts_support import fixture_lines, fixture_text, run_fact, run_lines


def test_gt1030_single_gpu() -> None:
    info = parse_nvidia_smi_xml(fixture_text("nvidia-smi-q-x-gt1030-470.74.xml"))
    assert info["driver_version"] == "470.74"
    assert info["cuda_version"] == "11.4"
    assert info["error"] is None
    assert info["gpus"] == [
        {
            "index": 0,
            "name": "NVIDIA GeForce GT 1030",
            "uuid": "GPU-857c6374-f681-cf3a-f99f-9063a87b8ac0",
            "pci_bus_id": "00000000:2D:00.0",
            "memory_total_mib": 1998,
            "persistence_mode": False,
            "mig_mode": None,
            "mig_mode_pending": None,
        },
    ]
    assert len(info["processes"]) == 10
    assert info["processes"][0] == {
        "gpu_uuid": "GPU-857c6374-f681-cf3a-f99f-9063a87b8ac0",
        "pid": 607,
        "process_name": "/usr/lib/Xorg",
        "used_memory_mib": 547,
    }


def test_memory_nvidia_smi_shows_as_na_is_unknown_not_zero() -> None:
    # nvidia-smi prints N/A for a process's memory it may not read (WDDM, other namespaces).
    xml = fixture_text("nvidia-smi-q-x-gt1030-470.74.xml").replace(
        "<used_memory>547 MiB</used_memory>", "<used_memory>N/A</used_memory>"
    )
    assert parse_nvidia_smi_xml(xml)["processes"][0]["used_memory_mib"] is None


def test_tesla_t4_processes() -> None:
    info = parse_nvidia_smi_xml(fixture_text("nvidia-smi-q-x-tesla-t4-515.105.01.xml"))
    uuid = "GPU-d37e67a5-91dd-3774-a5cb-99096249601a"
    assert (info["driver_version"], info["cuda_version"]) == ("515.105.01", "11.7")
    assert [gpu["memory_total_mib"] for gpu in info["gpus"]] == [15360]
    assert info["processes"] == [
        {"gpu_uuid": uuid, "pid": 675, "process_name": "/usr/lib/xorg/Xorg", "used_memory_mib": 22},
        {"gpu_uuid": uuid, "pid": 5762, "process_name": "python", "used_memory_mib": 1005},
    ]


def test_a100_mig_enabled_and_index_is_document_order() -> None:
    info = parse_nvidia_smi_xml(fixture_text("nvidia-smi-q-x-a100-mig-535.54.03.xml"))
    (gpu,) = info["gpus"]
    assert (gpu["mig_mode"], gpu["mig_mode_pending"]) == ("Enabled", "Enabled")
    # minor_number is 1 in this output: the index must not come from it.
    assert gpu["index"] == 0
    assert gpu["name"] == "NVIDIA A100-SXM4-80GB"
    assert gpu["memory_total_mib"] == 81920
    assert info["processes"] == []


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        (
            "nvidia-smi-error-no-driver.txt",
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
            "Make sure that the latest NVIDIA driver is installed and running.",
        ),
        (
            "nvidia-smi-error-nvml-mismatch.txt",
            "Failed to initialize NVML: Driver/library version mismatch",
        ),
        (
            "nvidia-smi-error-nvml-mismatch-570.txt",
            "Failed to initialize NVML: Driver/library version mismatch",
        ),
    ],
)
def test_nvidia_smi_failures_report_first_message(fixture: str, message: str) -> None:
    # nvidia-smi exits non-zero in these cases; the command appends the status marker.
    info = parse_nvidia_smi_output([*fixture_lines(fixture), f"{NVIDIA_SMI_EXIT_MARKER}9"])
    assert info == {
        "driver_version": None,
        "cuda_version": None,
        "gpus": [],
        "processes": [],
        "error": message,
    }


def test_nvidia_smi_output_with_xml_and_success_marker() -> None:
    lines = [*fixture_lines("nvidia-smi-q-x-tesla-t4-515.105.01.xml"), f"{NVIDIA_SMI_EXIT_MARKER}0"]
    info = parse_nvidia_smi_output(lines)
    assert info is not None
    assert info["error"] is None
    assert info == parse_nvidia_smi_xml(fixture_text("nvidia-smi-q-x-tesla-t4-515.105.01.xml"))


def test_missing_nvidia_smi_gives_none() -> None:
    assert parse_nvidia_smi_output([]) is None


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_nvidia_smi_command_runs_here(shell: str) -> None:
    status, lines = run_lines("command -v nvidia-smi")
    expected_absent = status != 0
    result = run_fact(NvidiaSmi(), shell)
    assert (result is None) is expected_absent


def test_proc_version_470() -> None:
    info = parse_nvidia_kernel(fixture_lines("proc-driver-nvidia-version-470.141.03.txt"))
    assert info["loaded_driver_version"] == "470.141.03"


def test_proc_version_open_kernel_module() -> None:
    info = parse_nvidia_kernel(fixture_lines("proc-driver-nvidia-version-open-610.57.04.txt"))
    assert info["loaded_driver_version"] == "610.57.04"


def test_proc_modules_manjaro() -> None:
    info = parse_nvidia_kernel(
        fixture_lines("proc-driver-nvidia-version-470.141.03.txt")
        + fixture_lines("proc-modules-manjaro-nvidia.txt"),
    )
    assert info == {
        "loaded_driver_version": "470.141.03",
        "nouveau_loaded": False,
        "nvidia_modules": {"nvidia_drm": 12, "nvidia_modeset": 6, "nvidia_uvm": 0, "nvidia": 62},
    }


def test_proc_modules_aks() -> None:
    info = parse_nvidia_kernel(fixture_lines("proc-modules-aks-grep-uvm.txt"))
    assert info["nvidia_modules"] == {"nvidia_uvm": 2, "nvidia": 67}
    assert info["loaded_driver_version"] is None


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_nvidia_kernel_command_runs_here(shell: str) -> None:
    status, _ = run_lines("test -r /proc/driver/nvidia/version")
    info = run_fact(NvidiaKernel(), shell)
    assert isinstance(info, dict)
    assert (info["loaded_driver_version"] is None) is (status != 0)
