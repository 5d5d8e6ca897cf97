"""
gpufleet/facts/dcgm.py from real dcgmi outputs: the GB10's DCGM 4.2.3 document, DCGM 4's
"diagnostic" test of an 8-GPU host (NVIDIA/DCGM#215), DCGM 3.3.1's categories of a T400
(NVIDIA/DCGM#139), the figures of a V100's DCGM 3.3.9 -v tables, and dcgmi's real lines when
nv-hostengine does not answer (their sources: each fixture's .source.txt, SOURCES.md).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from gpufleet.facts.dcgm import (
    DCGM4_ROOT,
    DCGMI_EXIT_MARKER,
    DCGMI_LEVEL_MARKER,
    DcgmDiag,
    figures,
    parse_dcgmi_diag,
)
from gpufleet.stack.dcgm import diag_problems
from tests.unit.test_facts_support import fixture_lines, fixture_text, run_fact

GB10 = "dcgmi-diag-r1-j-gb10-dcgm-4.2.3.json"
# dcgmi's lines when nothing listens on the host engine's port (dcgmi/Command.cpp; as printed on
# a host whose nvidia-dcgm.service was inactive, SOURCES.md §7).
NO_ENGINE = "Error: unable to establish a connection to the specified host: 127.0.0.1"
NO_ENGINE_GIVING_UP = (
    "Error: Unable to connect to host engine. Host engine connection invalid/disconnected."
)
PERSISTENCE_WARNING = (
    "Persistence Mode: Persistence mode for GPU 0 is disabled. Enable persistence mode by "
    'running "nvidia-smi -i <gpuId> -pm 1 " as root.'
)


def run_output(lines: list[str], level: int = 1, exit_status: int = 0) -> list[str]:
    """``lines`` as DcgmDiag's command prints them: between its level and exit markers."""
    return [f"{DCGMI_LEVEL_MARKER}{level}", *lines, f"{DCGMI_EXIT_MARKER}{exit_status}"]


def test_dcgm_4_gb10_software_fails_on_persistence_mode() -> None:
    info = parse_dcgmi_diag(run_output(fixture_lines(GB10), exit_status=226))
    assert info == {
        "level": 1,
        "dcgm_version": "4.2.3",
        "driver_version": "580.82.09",
        "hostengine_reachable": True,
        "gpus": [
            {
                "gpu": 0,
                "device_id": "2e12",
                "tests": {
                    "software": {
                        "status": "fail",
                        "warnings": [PERSISTENCE_WARNING],
                        "info": [],
                        "figures": {},
                    }
                },
            }
        ],
        "summary": {
            "software": {
                "status": "fail",
                "warnings": [],
                "info": [
                    "Error getting the SRAM Threshold Count for GPU 0. Status = 0. Value = "
                    "9223372036854775794. SRAM Threshold checking was skipped."
                ],
                "figures": {},
            }
        },
        "errors": [],
        "exit_status": 226,
    }
    assert diag_problems(info) == [f"GPU 0 software: fail ({PERSISTENCE_WARNING})"]


def dcgm4_test_document(fragment: str, category: str) -> list[str]:
    """A DCGM 4 document around one real test object (a fragment's trailing comma dropped)."""
    test = json.loads(fragment.strip().rstrip(","))
    document = {DCGM4_ROOT: {"test_categories": [{"category": category, "tests": [test]}]}}
    return json.dumps(document, indent="\t").splitlines()


def test_dcgm_4_diagnostic_of_eight_gpus_reads_each_gemm_rate() -> None:
    fragment = fixture_text("dcgmi-diag-j-fragment-diagnostic-test-dcgm-4-x8.txt")
    info = parse_dcgmi_diag(run_output(dcgm4_test_document(fragment, "Hardware"), level=3))
    assert info is not None and info["errors"] == []
    assert [gpu["gpu"] for gpu in info["gpus"]] == list(range(8))
    diagnostic = [gpu["tests"]["diagnostic"] for gpu in info["gpus"]]
    assert {result["status"] for result in diagnostic} == {"pass"}
    # Only GPUs 0 and 1 said how fast they were (DCGM#215: the info regression).
    assert [result["figures"] for result in diagnostic[:3]] == [
        {"gflops": 859.08},
        {"gflops": 859.08},
        {},
    ]
    assert diagnostic[2]["info"] == [
        "Allocated space for 138 output matricies from 76077622886 bytes available.",
        "Running with precisions: FP64 1, FP32 1, FP16 1",
    ]
    assert info["summary"]["diagnostic"]["status"] == "pass"
    assert diag_problems(info, expected_gpus=8) == []


def test_dcgm_3_categories_read_as_dcgm_4_tests() -> None:
    # The T400's Integration and Hardware categories under DCGM 3's root, as dcgmi wrote them.
    categories = fixture_text("dcgmi-diag-r3-j-fragment-t400-dcgm-3.3.1.txt").rstrip().rstrip(",")
    document = '{\n"DCGM GPU Diagnostic" : {\n"test_categories" : [\n' + categories + "\n]\n}\n}"
    info = parse_dcgmi_diag(run_output(document.splitlines(), level=3))
    assert info is not None and info["errors"] == []
    assert info["gpus"] == [
        {
            "gpu": 0,
            "device_id": None,
            "tests": {
                name: {"status": "skip", "warnings": [], "info": [], "figures": {}}
                for name in ("pcie", "memory", "diagnostic", "eud")
            },
        }
    ]
    # Skipped is no failure: what ran passed (nothing did, here).
    assert diag_problems(info) == []


def test_dcgm_3_deployment_checks_fold_into_software() -> None:
    # The shape dcgmi/Diag.cpp (3.3.9, HelperJsonAddBasicTests) gives the checks: one result
    # each, a failing one naming its GPU, its message under "warnings" (sic); GPU ids at the top.
    passing = {"name": "Denylist", "results": [{"status": "Pass"}]}
    failing = {
        "name": "Persistence Mode",
        "results": [
            {
                "gpu_id": 1,
                "status": "Fail",
                "warnings": [
                    {
                        "error_category": 8,
                        "error_id": 29,
                        "error_severity": 5,
                        "warnings": "Persistence mode for GPU 1 is disabled.",
                    }
                ],
            }
        ],
    }
    document = {
        "DCGM GPU Diagnostic": {
            "test_categories": [{"category": "Deployment", "tests": [passing, None, failing]}]
        },
        "Driver Version Detected": "470.182.03",
        "GPU Device IDs": ["1db4", "1db4"],
        "version": "3.3.9",
    }
    info = parse_dcgmi_diag(run_output(json.dumps(document).splitlines()))
    assert info is not None
    assert (info["dcgm_version"], info["driver_version"]) == ("3.3.9", "470.182.03")
    software = {gpu["gpu"]: gpu["tests"]["software"] for gpu in info["gpus"]}
    assert software[0] == {"status": "pass", "warnings": [], "info": [], "figures": {}}
    assert software[1]["status"] == "fail"
    assert software[1]["warnings"] == ["Persistence Mode: Persistence mode for GPU 1 is disabled."]
    assert [gpu["device_id"] for gpu in info["gpus"]] == ["1db4", "1db4"]


def table_info(name: str) -> list[str]:
    """The Info cells of a real `dcgmi diag -v` table, each joined back from its lines (dcgmi
    wraps a value mid-word every 45 characters)."""
    cells: list[list[str]] = []
    current: list[str] | None = None
    for line in fixture_lines(name):
        label, content = line[2:28].strip(), line[30:75]
        if label == "Info":
            current = [content]
            cells.append(current)
        elif not label and current is not None:
            current.append(content)
        else:
            current = None
    return ["".join(parts).rstrip() for parts in cells]


def test_figures_from_the_real_v100_tables() -> None:
    pcie, memory, diagnostic, stress, power = table_info(
        "dcgmi-diag-r3-v-v100-pcie-16gb-dcgm-3.3.9.txt"
    )
    assert figures([pcie]) == {
        "gpu_to_host_gb_s": 13.14,
        "host_to_gpu_gb_s": 12.37,
        "bidirectional_gb_s": 22.42,
        "gpu_to_host_latency_us": 2.028,
        "host_to_gpu_latency_us": 2.127,
        "bidirectional_latency_us": 3.865,
    }
    assert figures([memory]) == {"allocated_bytes": 16435239282, "allocated_percent": 97.1}
    assert figures([diagnostic]) == {"gflops": 21688.18}
    assert figures([stress]) == {"relative_stress_level": 1929}
    assert figures([power]) == {"max_power_w": 251.0, "average_power_w": 247.8}


def test_no_host_engine_the_diagnostic_still_runs_embedded() -> None:
    info = parse_dcgmi_diag(run_output([NO_ENGINE, *fixture_lines(GB10)], exit_status=226))
    assert info is not None
    assert info["hostengine_reachable"] is False
    assert info["errors"] == []
    assert [gpu["gpu"] for gpu in info["gpus"]] == [0]
    assert diag_problems(info)[0].startswith(
        "nv-hostengine is not running (nvidia-dcgm.service): dcgmi ran the diagnostic"
    )


def test_no_host_engine_and_no_result() -> None:
    info = parse_dcgmi_diag(run_output([NO_ENGINE, NO_ENGINE_GIVING_UP], exit_status=235))
    assert info is not None
    assert (info["hostengine_reachable"], info["gpus"]) == (False, [])
    assert info["errors"] == ["dcgmi printed no result (exit status 235)"]


@pytest.mark.parametrize(
    ("root", "message"),
    [
        # dcgmi/Diag.cpp HelperDisplayFailureMessage at 3.3.9 and 4.5.3: the message, the version.
        ("DCGM GPU Diagnostic", "Error: Diagnostic could not be run while DCGM is paused."),
        ("DCGM Diagnostic", "Error: Unable to complete diagnostic. Return: (-8) : NVML error\n"),
    ],
)
def test_runtime_error_is_the_error(root: str, message: str) -> None:
    document = {root: {"runtime_error": message, "version": "4.5.3"}}
    info = parse_dcgmi_diag(run_output(json.dumps(document, indent=3).splitlines(), 1, 248))
    assert info is not None
    assert (info["gpus"], info["errors"]) == ([], [message.strip()])
    assert diag_problems(info) == [f"dcgmi diag: {message.strip()}"]


def test_unreadable_output_is_an_error() -> None:
    info = parse_dcgmi_diag(run_output(['{ "DCGM Diagnostic" : {'], exit_status=226))
    assert info is not None
    assert info["errors"] == ["could not read dcgmi's JSON: line 1: Expecting property name"
                              " enclosed in double quotes"]  # fmt: skip
    other = parse_dcgmi_diag(run_output(['{"something": "else"}']))
    assert other is not None
    assert other["errors"] == [
        "dcgmi's JSON holds no 'DCGM Diagnostic' or 'DCGM GPU Diagnostic' result"
    ]


def test_no_dcgmi_is_none() -> None:
    assert parse_dcgmi_diag([]) is None
    assert diag_problems(None) == ["dcgmi is not installed (gpu_dcgm): DCGM's packages are missing"]


def test_command_runs_the_level_against_the_host_engine() -> None:
    command = DcgmDiag().command(level=2)
    assert "dcgmi diag --host 127.0.0.1 -r 2 -j 2>&1" in command
    with pytest.raises(ValueError, match="level 4 is not one of"):
        DcgmDiag().command(level=4)


def test_command_reads_dcgmi_for_real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A dcgmi that prints the GB10's document and exits as that one did.
    dcgmi = tmp_path / "dcgmi"
    dcgmi.write_text(f"#!/bin/sh\ncat {tmp_path / 'out.json'}\nexit 226\n")
    dcgmi.chmod(stat.S_IRWXU)
    (tmp_path / "out.json").write_text(fixture_text(GB10))
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    info = run_fact(DcgmDiag(), level=1)
    assert isinstance(info, dict)
    assert (info["level"], info["exit_status"], info["dcgm_version"]) == (1, 226, "4.2.3")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert run_fact(DcgmDiag(), shell="/bin/sh") is None
