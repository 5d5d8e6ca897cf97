"""
systemd units checked through the run's snapshot (gpufleet/facts/snapshot.py), so a converged
host costs no round trip per unit: pyinfra's systemd.service for system units, with the same
commands.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, operation
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus
from pyinfra.operations.util.service import handle_service_control

from gpufleet.facts import snapshot
from gpufleet.facts.systemd_units import UnitMainCommands


@operation()
def service(
    unit: str,
    running: bool = True,
    restarted: bool = False,
    enabled: bool | None = None,
):
    """
    Manage a system unit, as pyinfra's systemd.service does.

    + unit: the full unit name, e.g. ``docker.service``
    + running: whether the unit should be running
    + restarted: restart the unit (when it was running already)
    + enabled: whether the unit should be started at boot (None: leave it as it is)
    """
    statuses = snapshot.current(SystemdStatus, services=[unit])
    yield from handle_service_control(host, unit, statuses, "systemctl {1} {0}", running, restarted)
    if enabled is None:
        return
    if snapshot.current(SystemdEnabled, services=[unit]).get(unit, False) != enabled:
        yield StringCommand("systemctl", "enable" if enabled else "disable", QuoteString(unit))


@operation()
def runs_with(unit: str, argument: str):
    """
    Restart a running unit whose main process lacks ``argument``, after reloading the unit
    files: the running process is compared with the wanted one, so a run killed between
    writing a drop-in and the restart is repaired by the next.

    + unit: the full unit name, e.g. ``nvidia-persistenced.service``
    + argument: a command-line argument its process must run with
    """
    command = snapshot.current(UnitMainCommands, units=[unit]).get(unit)
    if command is None or argument in command.split():
        host.noop(f"{unit} runs with {argument} (or does not run)")
        return
    yield "systemctl daemon-reload"
    yield StringCommand("systemctl", "restart", QuoteString(unit))
