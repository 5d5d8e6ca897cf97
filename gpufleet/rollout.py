"""
Rolling driver change over a fleet: pyinfra runs gpufleet's driver upgrade on one batch of hosts
at a time (`--limit`), in parallel within the batch, and the rollout stops after the first batch
in which a host failed (refused, not upgraded, or not verified).

    gpufleet rollout inventories/<fleet>.py [--batch-size N] [--dry] [-- PYINFRA_ARGS]

The batch size is --batch-size, else the inventory's `upgrade_batch_size` (default 1). At the
end it prints the hosts done, failed and not reached; the hosts not reached were not touched.
Exit status: 0 all done, 1 a host failed, 2 the inventory cannot be rolled out (the reason on
stderr). --dry never waits for input: hosts that cannot be reached are reported, and fail it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpufleet.settings import SettingsError, read_settings

# The driver upgrade deploy, as pyinfra finds a deploy function by its import path.
DEPLOY = "gpufleet.driver_upgrade"
# pyinfra of this Python's environment (a virtualenv, pipx's), wherever its scripts are.
PYINFRA = [sys.executable, "-m", "pyinfra"]
# What pyinfra prints below an unexpected error: where the traceback went, and bug reports.
PYINFRA_POINTERS = ("--> The full traceback", "--> If this is unexpected")


class RolloutError(RuntimeError):
    """
    The inventory cannot be rolled out: unreadable, no hosts, invalid data, or batch sizes that
    disagree.
    """


@dataclass
class Rollout:
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    not_reached: list[str] = field(default_factory=list)

    def report(self) -> str:
        groups = {"done": self.done, "failed": self.failed, "not reached": self.not_reached}
        return "\n".join(
            f"{name} ({len(hosts)}): {', '.join(hosts) or '-'}" for name, hosts in groups.items()
        )


def pyinfra_error(stderr: str) -> str:
    """Why pyinfra failed: the last line it printed, its pointers below the error left out."""
    lines = [
        line.strip()
        for line in stderr.splitlines()
        if line.strip() and not line.startswith(PYINFRA_POINTERS)
    ]
    return lines[-1].removeprefix("--> ") if lines else "pyinfra failed, saying nothing"


def inventory_hosts(inventory: str, pyinfra_args: list[str]) -> list[tuple[str, int]]:
    """(name, upgrade_batch_size) of each host, in inventory order, as pyinfra reads them."""
    # pyinfra reads a name that is no file as a host or module name, and finds no hosts.
    if inventory.endswith(".py") and not Path(inventory).is_file():
        raise RolloutError(f"cannot read inventory {inventory}: no such file")
    process = subprocess.run(
        [*PYINFRA, "--json", *pyinfra_args, inventory, "debug-inventory"],
        capture_output=True,
        text=True,
        check=False,
    )
    if process.returncode != 0:
        raise RolloutError(f"cannot read inventory {inventory}: {pyinfra_error(process.stderr)}")
    try:
        hosts = json.loads(process.stdout)
    except json.JSONDecodeError as error:
        raise RolloutError(
            f"cannot read inventory {inventory}: pyinfra's host list is not JSON ({error})"
        ) from error
    if not hosts:
        raise RolloutError(f"inventory {inventory} has no hosts")
    return [(host["name"], upgrade_batch_size(host)) for host in hosts]


def upgrade_batch_size(host: dict[str, Any]) -> int:
    """The host's upgrade_batch_size, from its entry in pyinfra's JSON host list."""
    try:
        return read_settings(host["data"]).upgrade_batch_size
    except SettingsError as error:
        raise RolloutError(f"{host['name']}: {error}") from error


def batches(hosts: list[str], size: int) -> list[list[str]]:
    return [hosts[start : start + size] for start in range(0, len(hosts), size)]


def run_batch(inventory: str, hosts: list[str], pyinfra_args: list[str]) -> list[str]:
    """Run the upgrade deploy on ``hosts``; return those that failed (all, when it crashed)."""
    # One --limit per host: a pattern is one name or group (comma-joined names match nothing).
    limits = [argument for host in hosts for argument in ("--limit", host)]
    process = subprocess.run(
        [*PYINFRA, "-y", "--json", *limits, *pyinfra_args, inventory, DEPLOY],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    try:
        failed = json.loads(process.stdout)["results"]["failed_hosts"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return hosts
    if process.returncode != 0 and not failed:
        return hosts
    return [host for host in hosts if host in failed]


def dry_run_command(inventory: str, pyinfra_args: list[str]) -> list[str]:
    # -y: without it pyinfra asks whether to go on when a host cannot be reached (only when some
    # others can), and a dry run has nobody to answer. It also skips the table of detected
    # changes; each host's plan is logged by the deploy itself.
    return [*PYINFRA, "-y", "--dry", *pyinfra_args, inventory, DEPLOY]


def dry_run(inventory: str, pyinfra_args: list[str]) -> int:
    """Log each host's plan, changing nothing; pyinfra's exit status (1 when a host failed)."""
    inventory_hosts(inventory, pyinfra_args)
    command = dry_run_command(inventory, pyinfra_args)
    status = subprocess.run(command, stdin=subprocess.DEVNULL, check=False).returncode
    if status != 0:
        print("rollout: the dry run failed, see pyinfra's output above", file=sys.stderr)
    return status


def roll_out(
    inventory: str, batch_size: int | None = None, pyinfra_args: list[str] | None = None
) -> Rollout:
    pyinfra_args = pyinfra_args or []
    hosts = inventory_hosts(inventory, pyinfra_args)
    if batch_size is None:
        sizes = {size for _, size in hosts}
        if len(sizes) > 1:
            raise RolloutError(
                f"hosts disagree on upgrade_batch_size ({sorted(sizes)}): set it for the whole "
                "inventory, or pass --batch-size"
            )
        batch_size = sizes.pop() if sizes else 1
    rollout = Rollout(not_reached=[name for name, _ in hosts])
    for batch in batches(rollout.not_reached.copy(), batch_size):
        failed = run_batch(inventory, batch, pyinfra_args)
        rollout.not_reached = rollout.not_reached[len(batch) :]
        rollout.done += [host for host in batch if host not in failed]
        rollout.failed += failed
        if failed:
            break
    return rollout
