"""
Facts about Debian packages: installed versions and holds.
"""

from __future__ import annotations

import shlex
from typing import TypedDict

from pyinfra.api import FactBase


class DebPackageState(TypedDict):
    version: str
    held: bool
    installed: bool


def parse_dpkg_query_states(output: list[str]) -> dict[str, DebPackageState]:
    """
    Parse ``dpkg-query -W -f '${Package}\\t${Version}\\t${Status}\\n'`` lines. ``Status`` is
    "<want> <error flag> <state>": want ``hold`` is apt-mark's hold, state ``installed`` the only
    fully installed one (``config-files`` is a removed package whose conffiles remain).
    """
    states: dict[str, DebPackageState] = {}
    for line in output:
        fields = line.split("\t")
        if len(fields) != 3:
            continue
        name, version, status = fields
        status_words = status.split()
        if len(status_words) != 3:
            continue
        want, _, state = status_words
        states[name] = {
            "version": version,
            "held": want == "hold",
            "installed": state == "installed",
        }
    return states


class DebPackageStates(FactBase[dict[str, DebPackageState]]):
    """
    Returns version, hold and installed state for each of ``packages`` dpkg knows about; names
    dpkg has never seen are left out.
    """

    default = dict

    def command(self, packages: list[str]) -> str:
        if not packages:
            # dpkg-query -W without names would list every package.
            return "true"
        names = " ".join(shlex.quote(package) for package in packages)
        return (
            "dpkg-query -W -f '${Package}\\t${Version}\\t${Status}\\n' -- "
            f"{names} 2>/dev/null; true"
        )

    def process(self, output: list[str]) -> dict[str, DebPackageState]:
        return parse_dpkg_query_states(output)


def parse_showhold(output: list[str]) -> list[str]:
    return sorted(line.strip() for line in output if line.strip())


class HeldPackages(FactBase[list[str]]):
    """
    Returns the sorted names of packages held with ``apt-mark hold``.
    """

    default = list

    def command(self) -> str:
        return "apt-mark showhold 2>/dev/null; true"

    def process(self, output: list[str]) -> list[str]:
        return parse_showhold(output)
