"""The driver layer: nvidia-smi answers with the pinned driver, for every GPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpufleet.diagnosis.catalog import DRIVER_LIBRARY_MISMATCH, RERUN, explain
from gpufleet.diagnosis.checks import Check, failed, ok, outcome, unverified
from gpufleet.diagnosis.evidence import Expectations, HostEvidence, version_tuple

if TYPE_CHECKING:
    from gpufleet.facts.nvidia import NvidiaSmiInfo
from gpufleet.diagnosis.hardware import gpus_on_pci_bus
from gpufleet.stack.mig import SCRIPT_PATH, gpu_layouts, unmet_layouts


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
    if expectations.mig_layouts:
        checks.append(check_mig_layouts(nvidia_smi, evidence, expectations))
    return checks


def check_mig_layouts(
    nvidia_smi: NvidiaSmiInfo, evidence: HostEvidence, expectations: Expectations
) -> Check:
    name = "MIG layouts"
    instances = evidence.get("mig_instances")
    if instances is None:
        return unverified(name, "the MIG instances were not read")
    layouts = gpu_layouts(instances)
    modes = {gpu["index"]: gpu["mig_mode"] for gpu in nvidia_smi["gpus"]}
    unmet = unmet_layouts(expectations.mig_layouts, modes, layouts)
    seen = "; ".join(
        f"GPU {index}: {', '.join(layouts.get(index, [])) or 'MIG ' + (modes.get(index) or 'N/A')}"
        for index in sorted(expectations.mig_layouts)
    )
    return outcome(
        name,
        not unmet,
        seen,
        "; ".join(f"GPU {index}: {difference}" for index, difference in unmet.items()),
        f"run {SCRIPT_PATH} on the host (it says why a layout cannot be made), or {RERUN}",
    )
