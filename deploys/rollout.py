"""
Rolling driver change over a fleet: pyinfra runs deploys/driver_upgrade.py on one batch of hosts
at a time (`--limit`), in parallel within the batch, and the rollout stops after the first batch
in which a host failed (refused, not upgraded, or not verified).

    python -m deploys.rollout inventories/<fleet>.py [--batch-size N] [--dry] [-- PYINFRA_ARGS]

The batch size is --batch-size, else the inventory's `upgrade_batch_size` (default 1). At the
end it prints the hosts done, failed and not reached; the hosts not reached were not touched.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from deploys.settings import DATA_DEFAULTS, read_settings

DEPLOY = str(Path(__file__).with_name("driver_upgrade.py"))
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


class RolloutError(RuntimeError):
    """The inventory cannot be rolled out (unreadable, or batch sizes that disagree)."""


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


def inventory_hosts(inventory: str, pyinfra_args: list[str]) -> list[tuple[str, int]]:
    """(name, upgrade_batch_size) of each host, in inventory order, as pyinfra reads them."""
    process = subprocess.run(
        [PYINFRA, "--json", *pyinfra_args, inventory, "debug-inventory"],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        hosts = json.loads(process.stdout)
    except json.JSONDecodeError as error:
        raise RolloutError(f"cannot read inventory {inventory}:\n{process.stderr}") from error
    return [
        (host["name"], read_settings({**DATA_DEFAULTS, **host["data"]}).upgrade_batch_size)
        for host in hosts
    ]


def batches(hosts: list[str], size: int) -> list[list[str]]:
    return [hosts[start : start + size] for start in range(0, len(hosts), size)]


def run_batch(inventory: str, hosts: list[str], pyinfra_args: list[str]) -> list[str]:
    """Run the upgrade deploy on ``hosts``; return those that failed (all, when it crashed)."""
    # One --limit per host: a pattern is one name or group (comma-joined names match nothing).
    limits = [argument for host in hosts for argument in ("--limit", host)]
    process = subprocess.run(
        [PYINFRA, "-y", "--json", *limits, *pyinfra_args, inventory, DEPLOY],
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploys.rollout", description=__doc__)
    parser.add_argument("inventory")
    parser.add_argument("--batch-size", type=int, help="hosts per batch (upgrade_batch_size)")
    parser.add_argument("--dry", action="store_true", help="list each host's plan, change nothing")
    parser.add_argument("pyinfra_args", nargs="*", help="after --: more pyinfra options")
    # Intermixed: options may follow the inventory, and pyinfra options follow "--".
    arguments = parser.parse_intermixed_args(argv)
    if arguments.batch_size is not None and arguments.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if arguments.dry:
        command = [PYINFRA, "--dry", *arguments.pyinfra_args, arguments.inventory, DEPLOY]
        return subprocess.run(command, check=False).returncode
    rollout = roll_out(arguments.inventory, arguments.batch_size, arguments.pyinfra_args)
    print(rollout.report())
    return 1 if rollout.failed else 0


if __name__ == "__main__":
    sys.exit(main())
