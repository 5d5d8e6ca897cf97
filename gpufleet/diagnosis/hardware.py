"""The hardware layer: NVIDIA GPUs on the PCI bus, as many as the fleet expects."""

from __future__ import annotations

import re
from collections.abc import Sequence

from gpufleet.diagnosis.checks import Check, outcome, unverified
from gpufleet.diagnosis.evidence import Expectations, HostEvidence

NVIDIA_PCI_VENDOR = "10de"


def nvidia_gpus_on_pci_bus(lspci: Sequence[str]) -> list[str]:
    """The `lspci -nn` (or `lspci -n`) lines of NVIDIA display controllers (class 03xx).

    The audio, USB and NVSwitch functions NVIDIA boards also expose are other classes.
    """
    gpus = []
    for line in lspci:
        device_class = re.search(r"\[(03[0-9a-f]{2})\]:|^\S+ (03[0-9a-f]{2}):", line)
        if device_class and re.search(rf"\b{NVIDIA_PCI_VENDOR}:[0-9a-f]{{4}}\b", line):
            gpus.append(line.strip())
    return gpus


def expected_count_text(expectations: Expectations) -> str:
    count = expectations.expected_gpu_count
    return "at least 1" if count is None else str(count)


def count_matches(seen: int, expectations: Expectations) -> bool:
    count = expectations.expected_gpu_count
    return seen >= 1 if count is None else seen == count


def check_hardware(evidence: HostEvidence, expectations: Expectations) -> list[Check]:
    name = "NVIDIA GPUs on the PCI bus"
    lspci = evidence.get("lspci")
    if lspci is None:
        return [unverified(name, "lspci not available (install pciutils)")]
    gpus = nvidia_gpus_on_pci_bus(lspci)
    expected = expected_count_text(expectations)
    return [
        outcome(
            name,
            count_matches(len(gpus), expectations),
            f"{len(gpus)} (expected {expected})",
            f"{len(gpus)} NVIDIA GPU(s) on the PCI bus, expected {expected}",
            "check the cards are seated and powered and enabled in the BIOS, or fix the "
            "inventory's expected GPU count",
        )
    ]


def host_gpu_count(evidence: HostEvidence) -> int | None:
    """GPUs the host has: from lspci when known, else from nvidia-smi."""
    lspci = evidence.get("lspci")
    if lspci is not None:
        return len(nvidia_gpus_on_pci_bus(lspci))
    nvidia_smi = evidence.get("nvidia_smi")
    return len(nvidia_smi["gpus"]) if nvidia_smi else None
