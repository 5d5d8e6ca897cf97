"""Stand-in GPUs and NVSwitches on a booted test host's PCI bus.

The hosts share the build machine's read-only sysfs, which has no NVIDIA device. present_gpus()
writes /etc/nvidia-standin/gpus.json, the bus the stand-in nvidia-smi and nv-fabricmanager read,
and installs the stand-in lspci (testbed/gpu_bus/lspci) at /usr/local/sbin/lspci, ahead of
pciutils' /usr/bin/lspci on root's PATH, so `lspci -n -D -d 10de:` lists them:

    present_gpus(fleet, host, [A100_SXM4_80GB] * 8, [A100_NVSWITCH] * 6)
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from testbed.fleet import Fleet, TestHost

STANDIN_DIR = "/etc/nvidia-standin"
STANDIN_LSPCI = "/usr/local/sbin/lspci"
LSPCI_PAYLOAD = Path(__file__).with_name("gpu_bus") / "lspci"

# The GPUs' buses of an HGX A100 8-GPU board (DGX A100: 07, 0F, 47, 4E, 87, 90, B7, BD, as
# ClusterCockpit's cc-metric-collector documents an "n2dgx" node).
HGX_GPU_BUSES = (0x07, 0x0F, 0x47, 0x4E, 0x87, 0x90, 0xB7, 0xBD)
# Its six NVSwitches' buses: NOT FOUND for this board, chosen after the GPUs.
HGX_NVSWITCH_BUSES = (0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9)


@dataclass(frozen=True)
class StandinGpu:
    """What the stand-ins report of one GPU (nvidia-smi's table and queries, lspci's id)."""

    name: str
    pci_device_id: str  # lspci's device id: 10de:<pci_device_id>
    memory_total_mib: int
    power_limit_w: int


@dataclass(frozen=True)
class StandinNvswitch:
    pci_device_id: str


# Names, memory and power limits as real nvidia-smi tables print them (NVIDIA/nccl-tests#228,
# Azure/azhpc-images#343, the T4 of the nvidia-smi stand-in); device ids as lspci shows them.
A100_SXM4_80GB = StandinGpu("NVIDIA A100-SXM4-80GB", "20b2", 81920, 400)
H100_80GB_HBM3 = StandinGpu("NVIDIA H100 80GB HBM3", "2330", 81559, 700)
TESLA_T4 = StandinGpu("Tesla T4", "1eb8", 15109, 70)
# nvidia-smi's "Tesla V100-SXM2-16GB | 16160MiB | 300W" (the 2xV100 sample of gpufleet's
# nvidia-reference nvidia-smi.txt): a GPU every branch gpufleet installs drives, with the
# proprietary modules only, so it leaves each branch's package names as they were.
TESLA_V100 = StandinGpu("Tesla V100-SXM2-16GB", "1db1", 16160, 300)
# The stand-in nvidia-smi's MIG GPUs are this A100 and the H100 above: "NVIDIA A100-PCIE-40GB |
# 40960MiB | 250W" in real R535+ tables (code corpus ids 5675205116, 14036933393), device id 20f1
# as the driver README's supported-GPU list names it ("NVIDIA A100-PCIE-40GB | 20F1 10DE 145F").
A100_PCIE_40GB = StandinGpu("NVIDIA A100-PCIE-40GB", "20f1", 40960, 250)
# The NVSwitch of HGX A100 boards (`lspci -d 10de:1af1` in aws-parallelcluster-cookbook).
A100_NVSWITCH = StandinNvswitch("1af1")


def smi_bus_id(bus: int) -> str:
    """nvidia-smi's form of a bus id: 00000000:0F:00.0."""
    return f"00000000:{bus:02X}:00.0"


def standin_config(
    gpus: Sequence[StandinGpu], nvswitches: Sequence[StandinNvswitch] = ()
) -> dict[str, list[dict[str, object]]]:
    """The content of gpus.json: each GPU and NVSwitch at the next bus of an HGX board."""
    if len(gpus) > len(HGX_GPU_BUSES) or len(nvswitches) > len(HGX_NVSWITCH_BUSES):
        raise ValueError(
            f"an HGX board holds {len(HGX_GPU_BUSES)} GPUs and "
            f"{len(HGX_NVSWITCH_BUSES)} NVSwitches, not {len(gpus)} and {len(nvswitches)}"
        )
    return {
        "gpus": [
            {
                "name": gpu.name,
                "pci_device_id": gpu.pci_device_id,
                "memory_total_mib": gpu.memory_total_mib,
                "power_limit_w": gpu.power_limit_w,
                "bus_id": smi_bus_id(bus),
            }
            for gpu, bus in zip(gpus, HGX_GPU_BUSES, strict=False)
        ],
        "nvswitches": [
            {"bus_id": smi_bus_id(bus), "pci_device_id": switch.pci_device_id}
            for switch, bus in zip(nvswitches, HGX_NVSWITCH_BUSES, strict=False)
        ],
    }


def present_gpus(
    fleet: Fleet,
    host: TestHost | str,
    gpus: Sequence[StandinGpu],
    nvswitches: Sequence[StandinNvswitch] = (),
) -> None:
    """Put ``gpus`` and ``nvswitches`` on ``host``'s stand-in bus and its lspci on PATH."""
    config = json.dumps(standin_config(gpus, nvswitches), indent=2) + "\n"
    command = " && ".join(
        (
            f"mkdir -p {STANDIN_DIR} {Path(STANDIN_LSPCI).parent}",
            f"printf %s {shlex.quote(config)} > {STANDIN_DIR}/gpus.json",
            f"printf %s {shlex.quote(LSPCI_PAYLOAD.read_text())} > {STANDIN_LSPCI}",
            f"chmod 755 {STANDIN_LSPCI}",
        )
    )
    result = fleet.ssh(host, command)
    if result.returncode != 0:
        name = host if isinstance(host, str) else host.name
        raise RuntimeError(f"presenting GPUs on {name} failed: {result.stdout}{result.stderr}")
