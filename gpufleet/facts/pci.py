"""
The NVIDIA devices on the host's PCI bus: GPUs and NVSwitch bridges, whether or not a driver is
installed (gpufleet plans the driver from them).
"""

from __future__ import annotations

import re
import shlex

from pyinfra.api import FactBase

from gpufleet.stack.gpus import PCI_VENDOR_NVIDIA
from gpufleet.stack.hardware import PciDevice

SYSFS_PCI_DEVICES = "/sys/bus/pci/devices"

# lspci -n's line, "0000:07:00.0 0302: 10de:20b2 (rev a1)", and lspci -nn's, "0000:07:00.0 3D
# controller [0302]: NVIDIA Corporation GA100 [A100 SXM4 80GB] [10de:20b2] (rev a1)": the slot
# (its domain with -D), the class and the vendor:device ids.
_LSPCI_LINE = re.compile(
    r"(?P<address>(?:[0-9a-f]{4,}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) "
    r"(?:(?P<class_code>[0-9a-f]{4}): |.*?\[(?P<named_class>[0-9a-f]{4})\]: .*\[)"
    rf"{PCI_VENDOR_NVIDIA}:(?P<device_id>[0-9a-f]{{4}})\b"
)


def sysfs_devices_command(devices_dir: str) -> str:
    """
    The NVIDIA devices under ``devices_dir`` (sysfs) in lspci -n -D's format: every kernel has
    these files, a host without pciutils too. sysfs writes "0x10de", "0x20b2", "0x030200".
    """
    return (
        f"for device in {shlex.quote(devices_dir)}/*; do "
        f'[ "$(cat "$device/vendor")" = 0x{PCI_VENDOR_NVIDIA} ] || continue; '
        'id=$(cat "$device/device"); class=$(cat "$device/class"); class=${class#0x}; '
        f'echo "${{device##*/}} ${{class%??}}: {PCI_VENDOR_NVIDIA}:${{id#0x}}"; done'
    )


def parse_pci_devices(output: list[str]) -> list[PciDevice]:
    devices = []
    for line in output:
        match = _LSPCI_LINE.match(line.strip().lower())
        if match:
            address = match["address"]
            devices.append(
                PciDevice(
                    # Without -D, lspci leaves out the usual domain 0000.
                    address=address if address.count(":") == 2 else f"0000:{address}",
                    class_code=match["class_code"] or match["named_class"],
                    device_id=match["device_id"],
                )
            )
    return devices


class NvidiaPciDevices(FactBase[list[PciDevice]]):
    """
    Returns the NVIDIA devices on the PCI bus, from ``lspci -n -D`` where pciutils is installed,
    else from sysfs.

    .. code:: python

        [{"address": "0000:07:00.0", "class_code": "0302", "device_id": "20b2"}, ...]
    """

    default = list

    def command(self) -> str:
        return (
            "if command -v lspci >/dev/null 2>&1; "
            f"then lspci -n -D -d {PCI_VENDOR_NVIDIA}:; "
            f"else {sysfs_devices_command(SYSFS_PCI_DEVICES)}; fi; true"
        )

    def process(self, output: list[str]) -> list[PciDevice]:
        return parse_pci_devices(output)
