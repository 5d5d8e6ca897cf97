"""
Facts about running systemd units: the command line their main process really runs with, which
is what a restart handler compares with the wanted one (a unit file can change without a restart).
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

from gpufleet.facts.arguments import require_lists


def parse_unit_commands(output: list[str]) -> dict[str, str]:
    """``<unit>\\t<command line>`` lines -> unit: command line."""
    commands = {}
    for line in output:
        unit, separator, command = line.partition("\t")
        if separator:
            commands[unit] = command.strip()
    return commands


class UnitMainCommands(FactBase[dict[str, str]]):
    """
    Returns, for each of ``units`` whose main process runs, that process's command line (its
    arguments space-separated, from /proc/<MainPID>/cmdline); units not running are left out.
    """

    default = dict

    def command(self, units: list[str]) -> str:
        require_lists(self, units=units)
        if not units:
            return "true"
        names = " ".join(shlex.quote(unit) for unit in units)
        return (
            f"for unit in {names}; do "
            'pid=$(systemctl show -p MainPID --value "$unit" 2>/dev/null); '
            'if [ -n "$pid" ] && [ "$pid" != 0 ] && [ -r "/proc/$pid/cmdline" ]; then '
            "printf '%s\\t' \"$unit\"; tr '\\0' ' ' < \"/proc/$pid/cmdline\"; echo; fi; done; true"
        )

    def process(self, output: list[str]) -> dict[str, str]:
        return parse_unit_commands(output)
