"""The hardware layer: NVIDIA GPUs on the PCI bus, as many as the fleet expects."""

from __future__ import annotations

from gpufleet.diagnosis.checks import Check, outcome, unverified
from gpufleet.diagnosis.evidence import Expectations, HostEvidence
from gpufleet.stack.dcgm import DCGM_SERVICE, DIAG_LEVELS, diag_problems, worst_status
from gpufleet.stack.hardware import PciBus


def gpus_on_pci_bus(evidence: HostEvidence) -> int | None:
    """The NVIDIA GPUs on the host's PCI bus (lspci, or sysfs without pciutils); None when the
    bus was not read. The audio, USB and NVSwitch functions of NVIDIA boards are not GPUs."""
    devices = evidence.get("pci_devices")
    return None if devices is None else len(PciBus.from_devices(devices).gpus)


def expected_count_text(expectations: Expectations) -> str:
    count = expectations.expected_gpu_count
    return "at least 1" if count is None else str(count)


def count_matches(seen: int, expectations: Expectations) -> bool:
    count = expectations.expected_gpu_count
    return seen >= 1 if count is None else seen == count


def check_hardware(evidence: HostEvidence, expectations: Expectations) -> list[Check]:
    name = "NVIDIA GPUs on the PCI bus"
    seen = gpus_on_pci_bus(evidence)
    if seen is None:
        return [unverified(name, "the PCI bus was not read")]
    expected = expected_count_text(expectations)
    return [
        outcome(
            name,
            count_matches(seen, expectations),
            f"{seen} (expected {expected})",
            f"{seen} NVIDIA GPU(s) on the PCI bus, expected {expected}",
            "check the cards are seated and powered and enabled in the BIOS, or fix the "
            "inventory's expected GPU count",
        ),
        *([check_dcgm_diag(evidence, expectations)] if expectations.dcgm_diag_level else []),
    ]


def check_dcgm_diag(evidence: HostEvidence, expectations: Expectations) -> Check:
    """DCGM's diagnostic at the fleet's level: every test passed on every GPU."""
    level = expectations.dcgm_diag_level or 1
    name = f"DCGM diagnostic, level {DIAG_LEVELS[level].describe()}"
    info = evidence.get("dcgm_diag")
    problems = diag_problems(info, expectations.expected_gpu_count)
    seen = (
        "; ".join(
            f"GPU {gpu['gpu']}: "
            + worst_status(result["status"] for result in gpu["tests"].values())
            for gpu in info["gpus"]
        )
        if info and info["gpus"]
        else "no GPU diagnosed"
    )
    return outcome(
        name,
        not problems,
        seen,
        "; ".join(problems),
        f"read `dcgmi diag -r {level} -v` on the host; a failing GPU test with the stack in "
        f"place is the GPU's (reseat or replace it); is {DCGM_SERVICE} running?",
    )


def host_gpu_count(evidence: HostEvidence) -> int | None:
    """GPUs the host has: from the PCI bus when read, else from nvidia-smi."""
    seen = gpus_on_pci_bus(evidence)
    if seen is not None:
        return seen
    nvidia_smi = evidence.get("nvidia_smi")
    return len(nvidia_smi["gpus"]) if nvidia_smi else None
