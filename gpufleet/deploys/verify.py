"""
Verify a GPU host layer by layer, bottom first: hardware, driver, CUDA and cuDNN, container
runtime, framework (the TensorFlow smoke test in ``tensorflow_image`` with ``--gpus all``).

    pyinfra inventories/<fleet>.py deploys/verify.py

Read-only: the evidence is one fact (one round trip, the containers removed as they exit) and
the verdict is computed here, so verification never counts as a change. Each host's result is
written as JSON to ``gpu_results_dir`` on the controller, whatever the outcome, and its verdict
is logged as one line; a broken host fails, naming the broken link and its most likely fix.
gpu_host runs this at its end unless ``gpu_verify`` is false.

With ``tensorflow_host_test`` the smoke test also runs on the host, in a virtualenv with
TensorFlow 2.9 that this deploy installs (the only thing it installs, once).
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pyinfra import host, logger, state
from pyinfra.api import FunctionCommand, Host, State, deploy, operation
from pyinfra.operations import pip

from gpufleet import run_summary, version
from gpufleet.diagnosis import (
    HOST_TENSORFLOW_VERSION,
    LAYERS,
    CommandRun,
    Expectations,
    HostEvidence,
    HostVerdict,
    diagnose,
    parse_smoke_test_output,
    version_tuple,
)
from gpufleet.facts import snapshot
from gpufleet.facts.gpu_host import Python3Version
from gpufleet.facts.verify import VerificationEvidence, VerificationEvidenceInfo
from gpufleet.operations import packages as apt
from gpufleet.preflight import planned_driver_version, refuse_host, settings_or_refusal
from gpufleet.settings import DATA_DEFAULTS, GpuSettings
from gpufleet.stack import catalog
from gpufleet.stack.catalog import HOST_TEST_PACKAGES
from gpufleet.stack.compat import tensorflow_version_of_image
from gpufleet.stack.dcgm import DCGM_PACKAGE_PATTERNS
from gpufleet.stack.hardware import PciBus, PciDevice, framework_coverage
from gpufleet.stack.versions import upstream_version

HOST_TENSORFLOW_VENV = f"/opt/gpufleet/tensorflow-{HOST_TENSORFLOW_VERSION}"
HOST_TENSORFLOW_PYTHON = f"{HOST_TENSORFLOW_VENV}/bin/python"
# The lowest and highest Python TensorFlow 2.9 publishes wheels for.
HOST_TENSORFLOW_PYTHONS = ((3, 7), (3, 10))


def expectations_for(settings: GpuSettings, driver_version: str) -> Expectations:
    return Expectations(
        driver_version=driver_version,
        cuda_version=settings.cuda_version,
        cudnn_version=settings.cudnn_version,
        expected_gpu_count=settings.gpu_expected_count,
        default_runtime=settings.docker_default_runtime,
        tensorflow_image=settings.tensorflow_image,
        mig_layouts=settings.gpu_mig_layouts,
        dcgm_diag_level=settings.gpu_dcgm_diag_level if settings.gpu_dcgm else None,
    )


def run_output(run: CommandRun | None) -> str | None:
    return run["output"] if run else None


def host_evidence(
    host_name: str, gathered: VerificationEvidenceInfo, host_test: bool = False
) -> HostEvidence:
    """The diagnosis' evidence; ``host_test``: the smoke test was asked to run on the host."""
    smoke_test_output = run_output(gathered["smoke_test_run"])
    evidence: HostEvidence = {
        "host": host_name,
        "pci_devices": gathered["pci_devices"],
        "nvidia_smi": gathered["nvidia_smi"],
        "nvidia_kernel": gathered["nvidia_kernel"],
        "nvrm_messages": gathered["nvrm_messages"],
        "cuda": gathered["cuda"],
        "cudnn_version": gathered["cudnn_version"],
        "ldconfig": gathered["ldconfig"],
        "docker_info": gathered["docker_info"],
        "mig_instances": gathered["mig_instances"],
        "dcgm_diag": gathered["dcgm_diag"],
        "container_gpu_run": gathered["container_gpu_run"],
        "smoke_test": parse_smoke_test_output(smoke_test_output or ""),
        "smoke_test_output": smoke_test_output,
    }
    if host_test:
        host_output = run_output(gathered["host_smoke_test_run"])
        evidence["host_smoke_test"] = parse_smoke_test_output(host_output or "")
        evidence["host_smoke_test_output"] = host_output
    return evidence


def host_python_problem(python3_version: str | None) -> str | None:
    """Why the host cannot run TensorFlow 2.9's smoke test, or None."""
    lowest, highest = HOST_TENSORFLOW_PYTHONS
    if python3_version and lowest <= version_tuple(python3_version)[:2] <= highest:
        return None
    found = f"python3 {python3_version}" if python3_version else "no python3"
    return (
        f"tensorflow_host_test = True: TensorFlow {HOST_TENSORFLOW_VERSION} needs Python "
        f"{'.'.join(map(str, lowest))} to {'.'.join(map(str, highest))} on the host, which has "
        f"{found}; set tensorflow_host_test to false (the smoke test in tensorflow_image still "
        f"runs)"
    )


def result_document(
    host_name: str,
    gathered: VerificationEvidenceInfo,
    evidence: HostEvidence,
    verdict: HostVerdict,
    image: str,
) -> dict[str, Any]:
    """One host's result file, as deploys/fleet_report.py reads it."""
    os_release = gathered["os_release"]
    smoke_test_run = gathered["smoke_test_run"]
    packages = {name: state for name, state in gathered["packages"].items() if state["installed"]}
    toolkit = packages.get("nvidia-container-toolkit")
    return {
        "host": host_name,
        "generated_at": datetime.now(timezone.utc).strftime(run_summary.UTC_TIMESTAMP),
        "gpufleet_version": version(),
        "os": os_release.get("PRETTY_NAME") or os_release.get("ID"),
        "verdict": verdict,
        "container_toolkit_version": upstream_version(toolkit["version"]) if toolkit else None,
        "pinned_packages": [
            {"name": name, "version": state["version"], "held": state["held"]}
            for name, state in sorted(packages.items())
        ],
        # The loader cache's hundreds of lines stay out: the checks record the paths they used.
        "facts": {name: value for name, value in gathered.items() if name != "ldconfig"},
        "smoke_test": evidence.get("smoke_test"),
        # The run's wall time: on a JIT-only GPU the first start compiles the kernels.
        "smoke_test_seconds": smoke_test_run.get("seconds") if smoke_test_run else None,
        "framework_coverage": coverage_record(gathered["pci_devices"], image),
    }


def coverage_record(pci_devices: list[PciDevice], image: str) -> list[dict[str, str]]:
    """How ``image`` covers each GPU on the bus (native, JIT-only, unsupported)."""
    coverage = framework_coverage(
        PciBus.from_devices(pci_devices),
        image,
        tensorflow_version_of_image(image),
        allow_unsupported=True,
    )
    return [
        {"address": gpu.address, "gpu": gpu.describe(), "grade": grade.value}
        for gpu, grade in coverage.grades
    ]


def result_path(results_dir: str, host_name: str) -> Path:
    # Host names can be "@local" or "user@10.0.0.1": keep them readable but a single file name.
    return Path(results_dir) / (re.sub(r"[^\w.@-]", "_", host_name) + ".json")


def write_result(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` as JSON to ``path``; readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


def fail_host(state: State, host: Host, summary: str) -> bool:
    """
    Fail the host with its verdict. Returning False from a command fails this host only, where
    an exception raised in the operation would stop the run for the whole fleet.
    """
    logger.error(summary)
    run_summary.record_failure(state, host, summary.split(": ", 1)[-1])
    return False


@operation()
def verified(
    expectations: Expectations,
    results_dir: str,
    smoke_test: bool = True,
    host_python: str | None = None,
    fail_broken: bool = True,
    pinned_packages: tuple[str, ...] = (),
    nccl_conf: bool = False,
):
    """
    Verify the host layer by layer and write its result to ``results_dir``.

    + expectations: what a healthy host of the fleet has
    + results_dir: folder on the controller for ``<host>.json``
    + smoke_test: run the TensorFlow smoke test (the framework layer) in the image
    + host_python: also run it with this interpreter on the host
    + fail_broken: fail a broken host (False: report it only, as an audit does)
    + pinned_packages: the packages (dpkg-query patterns) whose versions and holds the result
      records
    + nccl_conf: mount the host's /etc/nccl.conf into the smoke test's container

    The evidence is gathered when the operation runs, after the installs before it; a dry run
    only says what would be verified.
    """
    if not state.is_executing:
        framework = f", TensorFlow in {expectations.tensorflow_image}" if smoke_test else ""
        on_host = f" and with {host_python}" if host_python else ""
        host.noop(f"would verify {', '.join(LAYERS[:-1])}{framework}{on_host}")
        return
    gathered = host.get_fact(
        VerificationEvidence,
        image=expectations.tensorflow_image,
        smoke_test=smoke_test,
        expected_gpus=expectations.expected_gpu_count or 0,
        host_python=host_python,
        packages=pinned_packages,
        nccl_conf=nccl_conf,
        mig=bool(expectations.mig_layouts),
        dcgm_diag_level=expectations.dcgm_diag_level,
    )
    evidence = host_evidence(host.name, gathered, host_test=host_python is not None)
    verdict = diagnose(evidence, expectations)
    write_result(
        result_path(results_dir, host.name),
        result_document(host.name, gathered, evidence, verdict, expectations.tensorflow_image),
    )
    if verdict["state"] == "broken" and fail_broken:
        yield FunctionCommand(fail_host, (verdict["summary"],), {})
    elif verdict["state"] == "ok":
        logger.info(verdict["summary"])
    else:
        logger.warning(verdict["summary"])


@deploy("gpufleet verification", data_defaults=DATA_DEFAULTS)
def verify() -> None:
    """The fleet's verification, from the host's data."""
    settings = settings_or_refusal(host.data)
    if settings is None:
        return
    driver_version = planned_driver_version(settings)
    if driver_version is None:
        return
    verify_host(
        settings=settings, driver_version=driver_version, smoke_test=settings.gpu_smoke_test
    )


@deploy("Verify GPU host")
def verify_host(
    settings: GpuSettings,
    driver_version: str,
    smoke_test: bool,
    fail_broken: bool = True,
    install_host_test: bool = True,
) -> None:
    """
    Verify the host against ``settings``, from an entry deploy (verify, gpu_host, audit,
    driver_upgrade).

    + settings: the fleet's settings
    + driver_version: the driver the host's plan pins
    + smoke_test: run the TensorFlow smoke test (the framework layer)
    + fail_broken: fail a broken host (False: report it only)
    + install_host_test: with ``tensorflow_host_test``, install its virtualenv when missing
      (False: run it only where it exists, changing nothing)
    """
    host_python = None
    if smoke_test and settings.tensorflow_host_test:
        problem = host_python_problem(snapshot.current(Python3Version))
        if problem:
            refuse_host([problem])
            return
        if install_host_test:
            host_tensorflow(settings.gpu_apt_lock_timeout)
        host_python = HOST_TENSORFLOW_PYTHON
    layers = "hardware to framework" if smoke_test else "hardware to container runtime"
    verified(
        name=f"Verify the GPU stack, {layers}",
        expectations=expectations_for(settings, driver_version),
        results_dir=settings.gpu_results_dir,
        smoke_test=smoke_test,
        host_python=host_python,
        fail_broken=fail_broken,
        pinned_packages=pinned_package_names(settings),
        nccl_conf=settings.nccl_settings.wanted,
    )


def pinned_package_names(settings: GpuSettings) -> tuple[str, ...]:
    """Every package gpufleet pins, every driver branch's, as dpkg-query patterns."""
    return (
        *catalog.DRIVER_PACKAGE_PATTERNS,
        *catalog.cuda_toolkit_packages(settings.cuda_version, settings.cuda_package_version),
        *catalog.CUDNN_PACKAGES,
        *catalog.CONTAINER_TOOLKIT_PACKAGES,
        *DCGM_PACKAGE_PATTERNS,
    )


def host_tensorflow(lock_timeout: int) -> None:
    """The host test's virtualenv with TensorFlow 2.9 (a GPU build: the pip package is one)."""
    apt.pinned_packages(
        name="python3-venv for the host TensorFlow test",
        packages=dict.fromkeys(HOST_TEST_PACKAGES),
        lock_timeout=lock_timeout,
        hold=False,
    )
    pip.virtualenv(
        name=f"Virtualenv {HOST_TENSORFLOW_VENV}",
        path=HOST_TENSORFLOW_VENV,
        python="python3",
        venv=True,
    )
    pip.packages(
        name=f"TensorFlow {HOST_TENSORFLOW_VERSION} in {HOST_TENSORFLOW_VENV}",
        packages=[f"tensorflow=={HOST_TENSORFLOW_VERSION}"],
        virtualenv=HOST_TENSORFLOW_VENV,
    )
