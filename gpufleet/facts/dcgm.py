"""
Fact about DCGM's diagnostic: `dcgmi diag -r LEVEL -j` through nv-hostengine, its JSON read into
gpufleet.stack.dcgm's model per GPU, from both formats dcgmi prints:

- DCGM 3.x: "DCGM GPU Diagnostic" > "test_categories"; "version", "Driver Version Detected" and
  "GPU Device IDs" at the top; one result per GPU with "gpu_id" (a string) and "info" (a string),
  and the Deployment checks as one system-wide result each;
- DCGM 4.x: "DCGM Diagnostic" > "test_categories" with one "test_summary" per test, results per
  entity ("entity_group", "entity_id") with "info" as a list, "entity_groups" and "metadata".

The 3.x Deployment checks are folded into one "software" result, as 4.x reports them, and the
3.x display names become 4.x's test names, so both read the same. Sources: SOURCES.md, "MIG
layouts and DCGM", sections 6 and 7.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

from pyinfra.api import FactBase

from gpufleet.stack.dcgm import (
    DEFAULT_DIAG_LEVEL,
    DIAG_LEVELS,
    HOSTENGINE_ADDRESS,
    DcgmDiagInfo,
    DiagStatus,
    DiagTestResult,
    GpuDiagResult,
    worst_status,
)

# Printed around dcgmi's output: the level it ran, then its exit status.
DCGMI_LEVEL_MARKER = "@@gpufleet:dcgmi-diag-level="
DCGMI_EXIT_MARKER = "@@gpufleet:dcgmi-exit="
# dcgmi's lines when nv-hostengine does not answer (dcgmi/Command.cpp). Given --host, `diag`
# prints the first and then runs in an engine of its own, as it has since DCGM 3.0.4; other
# commands add the second and give up.
CONNECTION_ERRORS = (
    "Error: unable to establish a connection to the specified host:",
    "Error: Unable to connect to host engine.",
)

DCGM4_ROOT = "DCGM Diagnostic"
DCGM3_ROOT = "DCGM GPU Diagnostic"
DEPLOYMENT_CATEGORY = "Deployment"
SOFTWARE_TEST = "software"
# DCGM 3.x display names whose DCGM 4 name is not the lower_snake_case of them.
LEGACY_TEST_NAMES = {"GPU Memory": "memory", "EUD Test": "eud", "CPU EUD Test": "cpu_eud"}
# dcgmi prints Pass, Fail, Warn, Skip; NVVS's own JSON PASS, FAIL, WARN, SKIPPED.
STATUSES: dict[str, DiagStatus] = {
    "pass": "pass",
    "fail": "fail",
    "warn": "warn",
    "skip": "skip",
    "skipped": "skip",
    "not run": "skip",
}

# What the tests measure, as their info lines say it (the plugins' formats in NVIDIA/DCGM, tabs
# before the values): the pcie test's bandwidths and latencies, memory's allocation, the
# diagnostic's GEMM rate, targeted stress's level and targeted power's draw. memory_bandwidth
# prints no figure in any real output found.
FIGURES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("gpu_to_host_gb_s", r"GPU to Host bandwidth:\s+([\d.]+) GB/s"),
        ("host_to_gpu_gb_s", r"Host to GPU bandwidth:\s+([\d.]+) GB/s"),
        ("bidirectional_gb_s", r"bidirectional bandwidth:\s+([\d.]+) GB/s"),
        ("gpu_to_host_latency_us", r"GPU to Host latency:\s+([\d.]+) us"),
        ("host_to_gpu_latency_us", r"Host to GPU latency:\s+([\d.]+) us"),
        ("bidirectional_latency_us", r"bidirectional latency:\s+([\d.]+) us"),
        ("allocated_bytes", r"Allocated (\d+) bytes"),
        ("allocated_percent", r"Allocated \d+ bytes \(([\d.]+)%\)"),
        ("gflops", r"calculated at approximately ([\d.]+) gigaflops"),
        ("relative_stress_level", r"relative stress level\s+([\d.]+)"),
        ("max_power_w", r"max power:\s+([\d.]+) W"),
        ("average_power_w", r"average power usage:\s+([\d.]+) W"),
    )
)


def diag_command(level: int) -> str:
    """
    `dcgmi diag` at ``level`` as JSON, through the host engine at its address: naming the
    address makes dcgmi say when nv-hostengine does not answer (it runs the diagnostic anyway).
    """
    if level not in DIAG_LEVELS:
        raise ValueError(f"dcgmi diag level {level!r} is not one of {sorted(DIAG_LEVELS)}")
    run = shlex.join(["dcgmi", "diag", "--host", HOSTENGINE_ADDRESS, "-r", str(level), "-j"])
    return (
        "if command -v dcgmi >/dev/null 2>&1; then "
        f"echo {shlex.quote(DCGMI_LEVEL_MARKER + str(level))}; "
        f'{run} 2>&1; echo "{DCGMI_EXIT_MARKER}$?"; fi'
    )


def figures(info: Iterable[str]) -> dict[str, float]:
    """The FIGURES the info lines state, each the first time it is stated."""
    found: dict[str, float] = {}
    for line in info:
        for name, pattern in FIGURES:
            match = pattern.search(line)
            if match and name not in found:
                found[name] = float(match[1])
    return found


def _texts(value: object) -> list[str]:
    """A list of strings, or one string (3.x's "info"), as a list."""
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def diag_test_result(entry: Mapping[str, Any], prefix: str = "") -> DiagTestResult:
    """
    One result object: its status, warnings (``prefix`` before each) and info. 3.x's Deployment
    checks name a warning's text "warnings", everything else "warning".
    """
    raw = str(entry.get("status", ""))
    status = STATUSES.get(raw.lower())
    warnings = [
        prefix + str(warning.get("warning", warning.get("warnings", "")))
        for warning in entry.get("warnings") or []
        if isinstance(warning, Mapping)
    ]
    if status is None:
        status = "fail"
        warnings.append(f"dcgmi reported the unknown status {raw!r}")
    info = _texts(entry.get("info"))
    return {"status": status, "warnings": warnings, "info": info, "figures": figures(info)}


def combined(results: list[DiagTestResult]) -> DiagTestResult:
    """Several results as one: the worst status, everything they say."""
    info = [line for result in results for line in result["info"]]
    return {
        "status": worst_status(result["status"] for result in results),
        "warnings": [warning for result in results for warning in result["warnings"]],
        "info": info,
        "figures": figures(info),
    }


def _gpu(gpus: dict[int, GpuDiagResult], gpu_id: int) -> GpuDiagResult:
    return gpus.setdefault(gpu_id, {"gpu": gpu_id, "device_id": None, "tests": {}})


def _tests(root: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """(category, test) of every test object (NVVS's JSON leaves nulls among them)."""
    for category in root.get("test_categories") or []:
        if isinstance(category, Mapping):
            for test in category.get("tests") or []:
                if isinstance(test, Mapping) and "name" in test:
                    yield str(category.get("category", "")), test


def _runtime_error(root: Mapping[str, Any], info: DcgmDiagInfo) -> None:
    """Why the diagnostic did not run: {"runtime_error": ..., "version": ...} alone."""
    if root.get("runtime_error"):
        info["errors"].append(str(root["runtime_error"]).strip())


def _read_dcgm4(document: Mapping[str, Any], info: DcgmDiagInfo) -> None:
    root = document[DCGM4_ROOT]
    _runtime_error(root, info)
    metadata = document.get("metadata") or {}
    info["dcgm_version"] = metadata.get("version") or root.get("version")
    info["driver_version"] = metadata.get("Driver Version Detected")
    gpus: dict[int, GpuDiagResult] = {}
    for group in document.get("entity_groups") or []:
        if group.get("entity_group") == "GPU":
            for entity in group.get("entities") or []:
                _gpu(gpus, int(entity["entity_id"]))["device_id"] = entity.get("device_id")
    for _, test in _tests(root):
        name = str(test["name"])
        per_gpu = []
        for entry in test.get("results") or []:
            # Only GPUs: the CPU entities of the cpu_eud test are no GPU's.
            if entry.get("entity_group", "GPU") == "GPU" and "entity_id" in entry:
                result = diag_test_result(entry)
                _gpu(gpus, int(entry["entity_id"]))["tests"][name] = result
                per_gpu.append(result)
        summary = test.get("test_summary")
        info["summary"][name] = diag_test_result(summary) if summary else combined(per_gpu)
    info["gpus"] = [gpus[gpu_id] for gpu_id in sorted(gpus)]


def _read_dcgm3(document: Mapping[str, Any], info: DcgmDiagInfo) -> None:
    root = document[DCGM3_ROOT]
    _runtime_error(root, info)
    info["dcgm_version"] = document.get("version") or root.get("version")
    info["driver_version"] = document.get("Driver Version Detected")
    gpus: dict[int, GpuDiagResult] = {}
    for gpu_id, device_id in enumerate(_texts(document.get("GPU Device IDs"))):
        _gpu(gpus, gpu_id)["device_id"] = device_id
    # Each Deployment check's one result holds for every GPU, or for its "gpu_id" alone.
    checks: list[tuple[int | None, DiagTestResult]] = []
    per_test: dict[str, list[DiagTestResult]] = {}
    for category, test in _tests(root):
        for entry in test.get("results") or []:
            on = int(entry["gpu_id"]) if "gpu_id" in entry else None
            if category == DEPLOYMENT_CATEGORY:
                checks.append((on, diag_test_result(entry, prefix=f"{test['name']}: ")))
            elif on is not None:
                name = LEGACY_TEST_NAMES.get(test["name"], test["name"].lower().replace(" ", "_"))
                result = diag_test_result(entry)
                _gpu(gpus, on)["tests"][name] = result
                per_test.setdefault(name, []).append(result)
    for on, _ in checks:
        if on is not None:
            _gpu(gpus, on)
    if checks:
        for gpu_id, gpu in gpus.items():
            software = combined([result for on, result in checks if on in (None, gpu_id)])
            # The checks come first, as 4.x's software test does.
            gpu["tests"] = {SOFTWARE_TEST: software, **gpu["tests"]}
        info["summary"][SOFTWARE_TEST] = combined([result for _, result in checks])
    for name, results in per_test.items():
        info["summary"][name] = combined(results)
    info["gpus"] = [gpus[gpu_id] for gpu_id in sorted(gpus)]


def parse_dcgmi_diag(output: list[str]) -> DcgmDiagInfo | None:
    """
    Parse the output of ``DcgmDiag().command()``: dcgmi's stdout and stderr between the level and
    exit markers. No output at all means dcgmi is not installed.
    """
    if not output:
        return None
    info: DcgmDiagInfo = {
        "level": None,
        "dcgm_version": None,
        "driver_version": None,
        "hostengine_reachable": True,
        "gpus": [],
        "summary": {},
        "errors": [],
        "exit_status": None,
    }
    lines = []
    for line in output:
        if line.startswith(DCGMI_LEVEL_MARKER):
            info["level"] = int(line.removeprefix(DCGMI_LEVEL_MARKER))
        elif line.startswith(DCGMI_EXIT_MARKER):
            info["exit_status"] = int(line.removeprefix(DCGMI_EXIT_MARKER))
        else:
            lines.append(line)
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("{")), len(lines))
    for message in (line.strip() for line in lines[:start] if line.strip()):
        if message.startswith(CONNECTION_ERRORS):
            info["hostengine_reachable"] = False
        else:
            info["errors"].append(message)
    if start == len(lines):
        if not info["errors"]:
            info["errors"].append(f"dcgmi printed no result (exit status {info['exit_status']})")
        return info
    try:
        document = json.loads("\n".join(lines[start:]))
    except json.JSONDecodeError as error:
        info["errors"].append(f"could not read dcgmi's JSON: line {error.lineno}: {error.msg}")
        return info
    if not isinstance(document, Mapping) or not (DCGM4_ROOT in document or DCGM3_ROOT in document):
        info["errors"].append(f"dcgmi's JSON holds no {DCGM4_ROOT!r} or {DCGM3_ROOT!r} result")
        return info
    try:
        (_read_dcgm4 if DCGM4_ROOT in document else _read_dcgm3)(document, info)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        info["errors"].append(f"could not read dcgmi's JSON: {type(error).__name__}: {error}")
    return info


class DcgmDiag(FactBase[DcgmDiagInfo | None]):
    """
    Returns DCGM's diagnostic at ``level`` (1, 2 or 3: `dcgmi diag -r LEVEL -j`) per GPU: each
    test's status, warnings, info and figures, each test's overall result, the DCGM and driver
    versions, whether nv-hostengine answered, and why the diagnostic did not run. None when
    dcgmi is not installed. Level 3 runs for about 15 minutes and loads the GPUs fully.
    """

    def command(self, level: int = DEFAULT_DIAG_LEVEL) -> str:
        return diag_command(level)

    def process(self, output: list[str]) -> DcgmDiagInfo | None:
        return parse_dcgmi_diag(output)
