"""
Rolling driver change over a fleet: pyinfra runs gpufleet's driver upgrade on one batch of hosts
at a time (`--limit`), in parallel within the batch, and the rollout stops after the first batch
in which a host failed (refused, not upgraded, or not verified).

    gpufleet rollout inventories/<fleet>.py [--driver-version V [--branch B]] [--batch-size N]
                     [--dry] [-- PYINFRA_ARGS]

--driver-version and --branch become pyinfra's `--data nvidia_driver_version=V` (and
nvidia_driver_branch) for every batch; the inventory keeps its own pin, which the next gpu_host
run would go back to, so the rollout ends with a warning naming the hosts it pins otherwise.
The batch size is --batch-size, else the inventory's `upgrade_batch_size` (default 1). Each batch
is announced as "batch i/n: host-a, host-b" and ends "batch i/n: done" or "batch i/n: failed
(host-b)". At the end it prints the hosts done, upgraded but failing verification, failed and
not reached; the hosts not reached were not touched. Exit status: 0 all done, 1 a host failed,
2 the inventory cannot be rolled out (the reason on stderr). --dry lists the batches and each
host's plan; it never waits for input: hosts that cannot be reached are reported, and fail it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpufleet.deploys.verify import result_path
from gpufleet.settings import GpuSettings, SettingsError, read_settings
from gpufleet.stack.versions import version_direction

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


@dataclass(frozen=True)
class DriverOverride:
    """--driver-version and --branch: pyinfra data that outranks the inventory's pin."""

    version: str
    branch: str | None = None

    def pyinfra_args(self) -> list[str]:
        data = {"nvidia_driver_version": self.version, "nvidia_driver_branch": self.branch}
        return [
            argument
            for key, value in data.items()
            if value is not None
            for argument in ("--data", f"{key}={value}")
        ]


@dataclass
class Rollout:
    done: list[str] = field(default_factory=list)
    # The driver changed, then the verification failed: these run the new driver, unproven.
    verification_failed: list[str] = field(default_factory=list)
    # Failed before or during the change.
    failed: list[str] = field(default_factory=list)
    not_reached: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return not (self.failed or self.verification_failed)

    def record(self, batch: list[str], failed: list[str], verification_failed: list[str]) -> None:
        self.not_reached = self.not_reached[len(batch) :]
        self.done += [host for host in batch if host not in failed]
        self.verification_failed += verification_failed
        self.failed += [host for host in failed if host not in verification_failed]

    def report(self) -> str:
        groups = {
            "done": self.done,
            "upgraded, verification failed": self.verification_failed,
            "failed": self.failed,
            "not reached": self.not_reached,
        }
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


def inventory_settings(inventory: str, pyinfra_args: list[str]) -> dict[str, GpuSettings]:
    """Each host's settings by name, in inventory order, from the data pyinfra reads."""
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
    return {host["name"]: host_settings(host) for host in hosts}


def host_settings(host: dict[str, Any]) -> GpuSettings:
    """The host's settings, from its entry in pyinfra's JSON host list."""
    try:
        return read_settings(host["data"])
    except SettingsError as error:
        raise RolloutError(f"{host['name']}: {error}") from error


def batch_plan(hosts: dict[str, GpuSettings], batch_size: int | None) -> list[list[str]]:
    """The hosts in batches of --batch-size, else of the size the whole inventory sets."""
    if batch_size is None:
        sizes = {settings.upgrade_batch_size for settings in hosts.values()}
        if len(sizes) > 1:
            raise RolloutError(
                f"hosts disagree on upgrade_batch_size ({sorted(sizes)}): set it for the whole "
                "inventory, or pass --batch-size"
            )
        batch_size = sizes.pop()
    names = list(hosts)
    return [names[start : start + batch_size] for start in range(0, len(names), batch_size)]


def say(line: str) -> None:
    # Flushed: a rollout runs for hours, often piped into a log.
    print(line, flush=True)


def announce(number: int, plan: list[list[str]]) -> str:
    """Print batch ``number`` (from 1) of ``plan`` with its hosts; return its label."""
    label = f"batch {number}/{len(plan)}"
    say(f"{label}: {', '.join(plan[number - 1])}")
    return label


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


def result_stamp(host: str, settings: GpuSettings) -> int | None:
    """When the host's verification result was last written (ns), None when it never was."""
    try:
        return result_path(settings.gpu_results_dir, host).stat().st_mtime_ns
    except FileNotFoundError:
        return None


def dry_run_command(inventory: str, pyinfra_args: list[str]) -> list[str]:
    # -y: without it pyinfra asks whether to go on when a host cannot be reached (only when some
    # others can), and a dry run has nobody to answer. It also skips the table of detected
    # changes; each host's plan is logged by the deploy itself.
    return [*PYINFRA, "-y", "--dry", *pyinfra_args, inventory, DEPLOY]


def dry_run(
    inventory: str,
    batch_size: int | None = None,
    pyinfra_args: list[str] | None = None,
    override: DriverOverride | None = None,
) -> int:
    """
    List the batches, then log each host's plan, changing nothing; pyinfra's exit status (1
    when a host failed).
    """
    pyinfra_args = pyinfra_args or []
    plan = batch_plan(inventory_settings(inventory, pyinfra_args), batch_size)
    for number in range(1, len(plan) + 1):
        announce(number, plan)
    override_args = override.pyinfra_args() if override else []
    command = dry_run_command(inventory, [*pyinfra_args, *override_args])
    status = subprocess.run(command, stdin=subprocess.DEVNULL, check=False).returncode
    if status != 0:
        print("rollout: the dry run failed, see pyinfra's output above", file=sys.stderr)
    return status


def roll_out(
    inventory: str,
    batch_size: int | None = None,
    pyinfra_args: list[str] | None = None,
    override: DriverOverride | None = None,
) -> Rollout:
    """Upgrade the inventory batch by batch, saying where it is; stop after a failed batch."""
    pyinfra_args = pyinfra_args or []
    # The inventory's own data (without the override), for its pins.
    hosts = inventory_settings(inventory, pyinfra_args)
    plan = batch_plan(hosts, batch_size)
    run_args = [*pyinfra_args, *(override.pyinfra_args() if override else [])]
    rollout = Rollout(not_reached=list(hosts))
    for number, batch in enumerate(plan, 1):
        label = announce(number, plan)
        stamps = {host: result_stamp(host, hosts[host]) for host in batch}
        failed = run_batch(inventory, batch, run_args)
        # The verification runs last, once the driver changed, and writes its result whatever
        # the verdict: a failed host with a new result failed there. (pyinfra's JSON results
        # cannot tell: it prints none when every host of the run failed.)
        unverified = [host for host in failed if result_stamp(host, hosts[host]) != stamps[host]]
        rollout.record(batch, failed, unverified)
        say(f"{label}: failed ({', '.join(failed)})" if failed else f"{label}: done")
        if failed:
            break
    if override is not None:
        changed = rollout.done + rollout.verification_failed
        rollout.warnings = pin_warnings(hosts, changed, override.version)
    return rollout


def pin_warnings(hosts: dict[str, GpuSettings], changed: list[str], version: str) -> list[str]:
    """The hosts of ``changed`` the inventory pins to another version than ``version``."""
    by_pin: dict[str | None, list[str]] = {}
    for host in changed:
        pin = hosts[host].nvidia_driver_version
        if pin != version:
            by_pin.setdefault(pin, []).append(host)
    return [pin_warning(pin, names, version) for pin, names in by_pin.items()]


def pin_warning(pin: str | None, hosts: list[str], version: str) -> str:
    names = ", ".join(hosts)
    if pin is None:
        return (
            f"warning: the inventory pins no nvidia_driver_version for {names}: the next "
            f"gpu_host run would install gpufleet's release of the branch, which may not be "
            f"{version}; pin {version} in the inventory"
        )
    return (
        f"warning: the inventory still pins nvidia_driver_version = {pin} for {names}: the next "
        f"gpu_host run would {version_direction(version, pin)} them; update the inventory"
    )
