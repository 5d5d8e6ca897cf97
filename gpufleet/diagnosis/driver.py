"""The driver layer: nvidia-smi answers with the pinned driver, for every GPU."""

from __future__ import annotations

from gpufleet.diagnosis.catalog import DRIVER_LIBRARY_MISMATCH, RERUN, explain
from gpufleet.diagnosis.checks import Check, failed, ok, outcome
from gpufleet.diagnosis.evidence import Expectations, HostEvidence, version_tuple
from gpufleet.diagnosis.hardware import gpus_on_pci_bus


def check_driver(evidence: HostEvidence, expectations: Expectations) -> list[Check]:
    driver = expectations.driver_version
    nvidia_smi = evidence.get("nvidia_smi")
    answers = "nvidia-smi answers"
    if nvidia_smi is None:
        return [
            failed(
                answers,
                "nvidia-smi not installed",
                "the NVIDIA driver is not installed",
                f"install driver {driver} ({RERUN})",
            )
        ]
    if nvidia_smi["error"]:
        # The kernel log says why a GPU was not initialised, which nvidia-smi cannot.
        kernel_log = "\n".join(evidence.get("nvrm_messages") or [])
        known = explain(f"{kernel_log}\n{nvidia_smi['error']}", expectations)
        problem, fix = known or ("nvidia-smi fails", f"reinstall driver {driver} ({RERUN})")
        return [failed(answers, nvidia_smi["error"], problem, fix)]
    checks = [ok(answers, f"{len(nvidia_smi['gpus'])} GPU(s)")]

    version = nvidia_smi["driver_version"] or "unknown"
    checks.append(
        outcome(
            "driver version",
            version == driver,
            version,
            f"driver {version} instead of {driver}",
            f"install driver {driver} ({RERUN}) and reboot",
        )
    )
    kernel = evidence.get("nvidia_kernel")
    loaded = kernel["loaded_driver_version"] if kernel else None
    if loaded is not None:
        checks.append(
            outcome(
                "loaded kernel module matches the libraries",
                loaded == version,
                f"kernel module {loaded}, libraries {version}",
                *DRIVER_LIBRARY_MISMATCH.describe((), expectations),
            )
        )
    supported = nvidia_smi["cuda_version"] or "unknown"
    checks.append(
        outcome(
            f"driver supports CUDA {expectations.cuda_version}",
            version_tuple(supported) >= version_tuple(expectations.cuda_version),
            f"CUDA {supported}",
            f"driver {version} supports CUDA up to {supported} only",
            f"install driver {driver} ({RERUN}) and reboot",
        )
    )
    listed = len(nvidia_smi["gpus"])
    on_bus = gpus_on_pci_bus(evidence)
    wanted = on_bus if on_bus is not None else expectations.expected_gpu_count
    checks.append(
        outcome(
            "driver sees every GPU",
            listed == wanted if wanted is not None else listed >= 1,
            f"{listed} listed by nvidia-smi, {wanted or 'at least 1'} expected",
            f"nvidia-smi lists {listed} GPU(s) of {wanted}: a GPU fell off the bus or failed",
            "look for Xid errors in dmesg (journalctl -k | grep -i xid); reboot, then reseat or "
            "replace the GPU",
        )
    )
    persistence_off = [
        str(gpu["index"]) for gpu in nvidia_smi["gpus"] if not gpu["persistence_mode"]
    ]
    checks.append(
        outcome(
            "persistence mode on",
            not persistence_off,
            f"off on GPU {', '.join(persistence_off)}" if persistence_off else "on",
            "persistence mode is off (slow first CUDA call, driver state lost between jobs)",
            f"enable nvidia-persistenced (systemctl enable --now nvidia-persistenced; {RERUN})",
        )
    )
    return checks
