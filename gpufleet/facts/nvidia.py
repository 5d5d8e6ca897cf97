"""
Facts about the NVIDIA driver: what ``nvidia-smi`` reports and what the kernel has loaded.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from typing import TypedDict

from pyinfra.api import FactBase

# Printed after nvidia-smi's own output so its exit status reaches the controller.
NVIDIA_SMI_EXIT_MARKER = "@@gpufleet:nvidia-smi-exit="

NVIDIA_MODULES = ("nvidia", "nvidia_uvm", "nvidia_drm", "nvidia_modeset")


class GpuInfo(TypedDict):
    index: int
    name: str
    uuid: str
    pci_bus_id: str
    memory_total_mib: int | None
    persistence_mode: bool
    mig_mode: str | None  # current: "Enabled", "Disabled"; None where the GPU has no MIG
    mig_mode_pending: str | None  # what it becomes at the next GPU reset or reboot


class GpuProcess(TypedDict):
    gpu_uuid: str
    pid: int
    process_name: str
    used_memory_mib: int | None


class NvidiaSmiInfo(TypedDict):
    driver_version: str | None
    cuda_version: str | None
    gpus: list[GpuInfo]
    processes: list[GpuProcess]
    error: str | None


class NvidiaKernelInfo(TypedDict):
    loaded_driver_version: str | None
    nouveau_loaded: bool
    nvidia_modules: dict[str, int]


def _text(element: ElementTree.Element, path: str) -> str | None:
    found = element.find(path)
    if found is None or found.text is None:
        return None
    return found.text.strip()


def _available(value: str | None) -> str | None:
    return None if value in (None, "", "N/A") else value


def _mebibytes(value: str | None) -> int | None:
    """``"15360 MiB"`` -> 15360; ``"N/A"`` or a missing element -> None."""
    match = re.fullmatch(r"(\d+) MiB", value or "")
    return int(match.group(1)) if match else None


def nvidia_smi_error(message: str) -> NvidiaSmiInfo:
    return {
        "driver_version": None,
        "cuda_version": None,
        "gpus": [],
        "processes": [],
        "error": message,
    }


def parse_nvidia_smi_xml(text: str) -> NvidiaSmiInfo:
    """Parse the XML document printed by ``nvidia-smi -q -x``."""
    root = ElementTree.fromstring(text)
    gpus: list[GpuInfo] = []
    processes: list[GpuProcess] = []

    # The document lists GPUs in nvidia-smi's own index order; minor_number is the /dev node.
    for index, gpu in enumerate(root.findall("gpu")):
        uuid = _text(gpu, "uuid") or ""
        gpus.append(
            {
                "index": index,
                "name": _text(gpu, "product_name") or "",
                "uuid": uuid,
                "pci_bus_id": _text(gpu, "pci/pci_bus_id") or gpu.get("id") or "",
                "memory_total_mib": _mebibytes(_text(gpu, "fb_memory_usage/total")),
                "persistence_mode": _text(gpu, "persistence_mode") == "Enabled",
                "mig_mode": _available(_text(gpu, "mig_mode/current_mig")),
                "mig_mode_pending": _available(_text(gpu, "mig_mode/pending_mig")),
            },
        )
        for process in gpu.findall("processes/process_info"):
            processes.append(
                {
                    "gpu_uuid": uuid,
                    "pid": int(_text(process, "pid") or 0),
                    "process_name": _text(process, "process_name") or "",
                    "used_memory_mib": _mebibytes(_text(process, "used_memory")),
                },
            )

    return {
        "driver_version": _available(_text(root, "driver_version")),
        "cuda_version": _available(_text(root, "cuda_version")),
        "gpus": gpus,
        "processes": processes,
        "error": None,
    }


def parse_nvidia_smi_output(output: list[str]) -> NvidiaSmiInfo | None:
    """
    Parse the output of ``NvidiaSmi().command()``: nvidia-smi's stdout and stderr, then the exit
    marker. No output at all means nvidia-smi is not installed.
    """
    if not output:
        return None

    exit_status: int | None = None
    xml_lines: list[str] = []
    messages: list[str] = []
    in_document = False
    for line in output:
        if line.startswith(NVIDIA_SMI_EXIT_MARKER):
            exit_status = int(line.removeprefix(NVIDIA_SMI_EXIT_MARKER))
            continue
        # stderr is merged into stdout, so warnings can surround the XML document.
        if line.startswith(("<?xml", "<nvidia_smi_log")):
            in_document = True
        if in_document:
            xml_lines.append(line)
            in_document = "</nvidia_smi_log>" not in line
        elif line.strip():
            messages.append(line.strip())

    if xml_lines:
        try:
            info = parse_nvidia_smi_xml("\n".join(xml_lines))
        except ElementTree.ParseError as error:
            return nvidia_smi_error(f"could not parse nvidia-smi XML: {error}")
        if exit_status:
            info["error"] = messages[0] if messages else f"nvidia-smi exited with {exit_status}"
        return info

    if messages:
        return nvidia_smi_error(messages[0])
    return nvidia_smi_error(f"nvidia-smi -q -x printed nothing (exit status {exit_status})")


class NvidiaSmi(FactBase[NvidiaSmiInfo | None]):
    """
    Returns the driver and CUDA versions, GPUs and GPU processes reported by ``nvidia-smi -q -x``.
    None when nvidia-smi is not installed; when it fails (no driver loaded, NVML version
    mismatch) the lists are empty and ``error`` holds nvidia-smi's message.
    """

    def command(self) -> str:
        return (
            "if command -v nvidia-smi >/dev/null 2>&1; then "
            f'nvidia-smi -q -x 2>&1; echo "{NVIDIA_SMI_EXIT_MARKER}$?"; fi'
        )

    def process(self, output: list[str]) -> NvidiaSmiInfo | None:
        return parse_nvidia_smi_output(output)


def parse_nvidia_kernel(output: list[str]) -> NvidiaKernelInfo:
    """Parse /proc/driver/nvidia/version and /proc/modules lines (in any order)."""
    info: NvidiaKernelInfo = {
        "loaded_driver_version": None,
        "nouveau_loaded": False,
        "nvidia_modules": {},
    }
    for line in output:
        version = re.match(r"NVRM version: .* Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)\s", line)
        if version:
            info["loaded_driver_version"] = version.group(1)
            continue
        # name size refcount users state address [taints]; refcount is "-" on kernels
        # built without module unloading, where no users are counted.
        module = re.match(r"(\S+) \d+ (\d+|-) \S+ (?:Live|Loading|Unloading) ", line)
        if not module:
            continue
        name, refcount = module.groups()
        if name == "nouveau":
            info["nouveau_loaded"] = True
        elif name in NVIDIA_MODULES:
            info["nvidia_modules"][name] = int(refcount) if refcount.isdigit() else 0
    return info


class NvidiaKernel(FactBase[NvidiaKernelInfo]):
    """
    Returns the NVIDIA kernel module version actually loaded (which can differ from the installed
    user-space libraries until a reboot), whether nouveau is loaded, and the use counts of the
    nvidia modules.
    """

    def command(self) -> str:
        module_names = "|".join(("nouveau", *NVIDIA_MODULES))
        return (
            "cat /proc/driver/nvidia/version 2>/dev/null; "
            f"grep -E '^({module_names}) ' /proc/modules 2>/dev/null; true"
        )

    @staticmethod
    def default() -> NvidiaKernelInfo:
        return parse_nvidia_kernel([])

    def process(self, output: list[str]) -> NvidiaKernelInfo:
        return parse_nvidia_kernel(output)


class NvrmMessages(FactBase[list[str]]):
    """
    Returns the NVIDIA kernel module's recent messages (the "NVRM:" lines of the kernel log):
    why a GPU was not initialised, which nvidia-smi cannot say.
    """

    default = list

    def command(self) -> str:
        return "dmesg 2>/dev/null | grep -F 'NVRM:' | tail -n 40; true"

    def process(self, output: list[str]) -> list[str]:
        return output
