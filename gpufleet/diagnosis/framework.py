"""The framework layer: the TensorFlow smoke test's report, in the image and on the host."""

from __future__ import annotations

import json
from typing import Any

from gpufleet.diagnosis.catalog import RERUN, explain
from gpufleet.diagnosis.checks import Check, failed, ok, outcome, unverified
from gpufleet.diagnosis.evidence import Expectations, HostEvidence, first_line
from gpufleet.diagnosis.hardware import host_gpu_count

# The TensorFlow the host test (tensorflow_host_test) installs in its virtualenv.
HOST_TENSORFLOW_VERSION = "2.9.0"


def parse_smoke_test_output(output: str) -> dict[str, Any] | None:
    """
    tf_smoke_test.py's report: the last line that is a JSON object. It prints the report last on
    stdout, but stderr merged into the same output (docker's, TensorFlow's at exit) may follow.
    """
    for line in reversed(output.splitlines()):
        if not line.startswith("{"):
            continue
        try:
            report = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(report, dict):
            return report
    return None


def check_framework(evidence: HostEvidence, expectations: Expectations) -> list[Check]:
    image = expectations.tensorflow_image
    checks = smoke_test_checks(
        evidence.get("smoke_test"),
        evidence.get("smoke_test_output") or "",
        evidence,
        expectations,
        where=f"in {image}",
        install_fix=f"run the smoke test in {image}",
    )
    if "host_smoke_test_output" in evidence:
        host_checks = smoke_test_checks(
            evidence.get("host_smoke_test"),
            evidence.get("host_smoke_test_output") or "",
            evidence,
            expectations,
            where="on the host",
            install_fix=f"install tensorflow=={HOST_TENSORFLOW_VERSION} (a GPU build) in the "
            f"host's virtualenv ({RERUN} with tensorflow_host_test)",
        )
        checks += [{**check, "name": f"on the host: {check['name']}"} for check in host_checks]
    return checks


def smoke_test_checks(
    report: dict[str, Any] | None,
    output: str,
    evidence: HostEvidence,
    expectations: Expectations,
    where: str,
    install_fix: str,
) -> list[Check]:
    """The checks of one smoke test run: ``where`` it ran, ``install_fix`` for a TensorFlow that
    is missing or CPU-only there."""
    if report is None:
        name = "smoke test reported"
        if not output:
            return [unverified(name, "smoke test not run")]
        problem, fix = explain(output, expectations) or (
            "the smoke test crashed before reporting",
            f"run it by hand {where} and read its output",
        )
        return [failed(name, first_line(output[-2000:]), problem, fix)]
    version = report.get("tensorflow_version") or "not importable"
    error = report.get("error") or ""
    if report.get("tensorflow_version") is None:
        return [
            failed(
                "TensorFlow imports",
                error,
                "TensorFlow cannot be imported where the smoke test ran",
                install_fix,
            )
        ]
    checks = [
        outcome(
            "TensorFlow built with CUDA",
            bool(report.get("built_with_cuda")),
            f"TensorFlow {version}, is_built_with_cuda={report.get('built_with_cuda')}",
            "this TensorFlow is a CPU-only build",
            install_fix,
        )
    ]
    if not report.get("built_with_cuda"):
        return checks
    gpus = report.get("gpus") or []
    wanted = host_gpu_count(evidence) or expectations.expected_gpu_count or 1
    problem, fix = explain(f"{error}\n{output}", expectations) or (
        f"TensorFlow sees {len(gpus)} of {wanted} GPUs",
        f"run the smoke test with --gpus all in {expectations.tensorflow_image}",
    )
    checks.append(
        outcome(
            "TensorFlow sees every GPU",
            len(gpus) >= wanted,
            f"{len(gpus)} of {wanted}" + (f": {error}" if not gpus else ""),
            problem,
            fix,
        )
    )
    for smoke_check in report.get("checks") or []:
        checks.append(framework_check(smoke_check, expectations))
    return checks


def framework_check(smoke_check: dict[str, Any], expectations: Expectations) -> Check:
    gpu = smoke_check.get("gpu")
    where = "all GPUs" if gpu is None else f"GPU {gpu}"
    name = f"{smoke_check.get('name')} on {where}"
    detail = str(smoke_check.get("detail") or "")
    ms = smoke_check.get("ms")
    evidence = f"{ms} ms; {detail}" if ms is not None else detail
    if smoke_check.get("passed"):
        return ok(name, evidence)
    known = explain(detail, expectations)
    if known:
        return failed(name, evidence, *known)
    if detail.startswith("ran on"):
        return failed(
            name,
            evidence,
            "TensorFlow ran the op on another device",
            f"check the GPU's compute capability is supported by {expectations.tensorflow_image}",
        )
    return failed(
        name,
        evidence,
        f"{where} computes wrong results or fails",
        "look for Xid errors in dmesg and ECC errors (nvidia-smi -q -d ECC); drain the GPU",
    )
