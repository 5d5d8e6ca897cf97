"""The host's network interfaces, as the kernel names them."""

from __future__ import annotations

from pyinfra.api import FactBase


class NetworkInterfaces(FactBase[list[str]]):
    """
    Returns the names of the host's network interfaces (/sys/class/net), sorted.
    """

    default = list

    def command(self) -> str:
        return "ls /sys/class/net 2>/dev/null; true"

    def process(self, output: list[str]) -> list[str]:
        return sorted(line.strip() for line in output if line.strip())
