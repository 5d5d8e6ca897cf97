"""
NCCL's system-wide settings (/etc/nccl.conf) and which of the host's interfaces a
NCCL_SOCKET_IFNAME selects. Source: NCCL's "Environment Variables" (SOURCES.md, "NCCL").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

NCCL_CONF_PATH = "/etc/nccl.conf"
# "eth", "=eth0,=eth1", "^docker,lo", "^=docker0": a list of interface name prefixes, all of them
# excluded after "^", all exact names after "=".
SOCKET_IFNAME = re.compile(r"\^?=?[A-Za-z0-9_.:-]{1,15}(,[A-Za-z0-9_.:-]{1,15})*")


class NcclDebug(str, Enum):
    """NCCL_DEBUG's levels."""

    VERSION = "VERSION"
    WARN = "WARN"
    INFO = "INFO"
    TRACE = "TRACE"


@dataclass(frozen=True)
class NcclSettings:
    socket_ifname: str | None = None
    ib_disable: bool | None = None
    debug: str | None = None

    @property
    def wanted(self) -> bool:
        return any(value is not None for value in (self.socket_ifname, self.ib_disable, self.debug))


def render_nccl_conf(settings: NcclSettings) -> str:
    """/etc/nccl.conf: one VARIABLE=value line per setting, as NCCL reads it."""
    lines = ["# Managed by gpufleet (nccl_* inventory keys); NCCL reads it at its start."]
    if settings.socket_ifname is not None:
        lines.append(f"NCCL_SOCKET_IFNAME={settings.socket_ifname}")
    if settings.ib_disable is not None:
        lines.append(f"NCCL_IB_DISABLE={int(settings.ib_disable)}")
    if settings.debug is not None:
        lines.append(f"NCCL_DEBUG={settings.debug}")
    return "\n".join(lines) + "\n"


def selected_interfaces(socket_ifname: str, interfaces: Sequence[str]) -> list[str]:
    """The interfaces NCCL would use: those matching the list, or not matching it after "^"."""
    exclude = socket_ifname.startswith("^")
    names = socket_ifname.removeprefix("^")
    exact = names.startswith("=")
    prefixes = names.removeprefix("=").split(",")

    def listed(interface: str) -> bool:
        return any(
            interface == prefix if exact else interface.startswith(prefix) for prefix in prefixes
        )

    return [interface for interface in interfaces if listed(interface) != exclude]


def interface_problem(socket_ifname: str | None, interfaces: Sequence[str]) -> str | None:
    """Why the host cannot use ``socket_ifname``: it selects none of its interfaces."""
    if socket_ifname is None or selected_interfaces(socket_ifname, interfaces):
        return None
    example = next((name for name in interfaces if name != "lo"), "eth0")
    return (
        f"nccl_socket_ifname = {socket_ifname!r} selects none of the host's network interfaces "
        f"({', '.join(interfaces) or 'none'}); name one of them, e.g. '={example}'"
    )
