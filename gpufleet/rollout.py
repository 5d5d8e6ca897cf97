"""
Rolling driver change over a fleet: pyinfra runs gpufleet's driver upgrade on one batch of hosts
at a time (`--limit`), in parallel within the batch, under the inventory's rules.

    gpufleet rollout inventories/<fleet>.py [--driver-version V [--branch B]] [--batch-size N]
                     [--dry | --status] [-- PYINFRA_ARGS]

- Batches: at most --batch-size, else `upgrade_max_unavailable`, else `upgrade_batch_size` hosts
  out of service at once; hosts whose Slurm node is already drained or down count, and go first.
- With `gpu_scheduler: slurm` a batch's nodes are drained, their jobs waited for (progress once a
  minute, `upgrade_drain_timeout`), then upgraded and verified; the nodes gpufleet drained are
  resumed unless the host failed. Slurm's commands run on the hosts (any node's root may run
  them), read through pyinfra's fact command (gpufleet/facts/slurm.py) and `exec`.
- The rollout stops once `upgrade_max_failed` hosts failed; skipped hosts (`upgrade_skip`, the
  skip file) are never touched.
- Every transition is written to `.gpufleet/rollout-<target>.json` beside the inventory
  (gpufleet/rollout_state.py): the same command takes an interrupted rollout up again.

--driver-version and --branch become pyinfra's `--data nvidia_driver_version=V` (and
nvidia_driver_branch) for every batch; the inventory keeps its own pin, which the next gpu_host
run would go back to, so the rollout ends with a warning naming the hosts it pins otherwise.
Each batch is announced as "batch i/n: host-a, host-b" and ends "batch i/n: done" or "batch i/n:
failed (host-b)". At the end it prints the hosts done, upgraded but failing verification,
failed, not reached and skipped, and a line per host with a note. Exit status: 0 all done, 1 a
host failed or was not reached, 2 the inventory cannot be rolled out (the reason on stderr).
--dry lists the batches, each node's Slurm state and jobs, and each host's plan; it never waits
for input: hosts that cannot be reached are reported, and fail it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from gpufleet.deploys.verify import result_path
from gpufleet.facts.slurm import (
    SKIP_FILE,
    RolloutHost,
    RolloutHostInfo,
    SlurmJob,
    SlurmNode,
    SlurmNodesInfo,
)
from gpufleet.rollout_state import (
    TO_DO,
    HostPhase,
    RolloutFile,
    RolloutLocked,
    RolloutRecord,
    records,
    rollout_lock,
)
from gpufleet.settings import GpuSettings, SettingsError, read_settings
from gpufleet.stack.slurm import (
    NODE_NAME,
    Scheduler,
    drain_reason,
    drained_by_gpufleet,
    node_unavailable,
    unavailable_budget,
)
from gpufleet.stack.versions import version_direction

# The driver upgrade deploy, as pyinfra finds a deploy function by its import path.
DEPLOY = "gpufleet.driver_upgrade"
# pyinfra of this Python's environment (a virtualenv, pipx's), wherever its scripts are.
PYINFRA = [sys.executable, "-m", "pyinfra"]
# The facts a rollout reads through pyinfra's fact command (gpufleet/facts/slurm.py).
ROLLOUT_HOST = "gpufleet.facts.slurm.RolloutHost"
SLURM_NODES = "gpufleet.facts.slurm.SlurmNodes"
# How often a rollout asks Slurm whether a drained node's jobs ended, and says it still waits.
POLL_SECONDS = 5
PROGRESS_SECONDS = 60
# A node sinfo did not list: out of service as far as a rollout can tell.
UNKNOWN_NODE: SlurmNode = {"state": "unknown", "reason": None}
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
    skipped: list[str] = field(default_factory=list)
    # Per host: what the rollout did about its node, or why it skipped it.
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return not (self.failed or self.verification_failed or self.not_reached)

    @classmethod
    def of(cls, record: RolloutRecord) -> Rollout:
        """The groups of the hosts as the rollout's record has them."""
        rollout = cls()
        for name, host in record.hosts.items():
            if host.phase is HostPhase.DONE:
                rollout.done.append(name)
            elif host.phase is HostPhase.SKIPPED:
                rollout.skipped.append(name)
            elif host.phase is HostPhase.FAILED and host.driver_changed:
                rollout.verification_failed.append(name)
            elif host.phase is HostPhase.FAILED:
                rollout.failed.append(name)
            else:
                rollout.not_reached.append(name)
            if host.note:
                rollout.notes.append(f"{name}: {host.note}")
        return rollout

    def report(self) -> str:
        groups = {
            "done": self.done,
            "upgraded, verification failed": self.verification_failed,
            "failed": self.failed,
            "not reached": self.not_reached,
            "skipped": self.skipped,
        }
        lines = [
            f"{name} ({len(hosts)}): {', '.join(hosts) or '-'}" for name, hosts in groups.items()
        ]
        return "\n".join([*lines, *self.notes])


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


def fleet_rule(hosts: dict[str, GpuSettings], key: str, option: str | None = None) -> Any:
    """A rule the whole inventory must agree on (a batch size, a budget), from its hosts."""
    values = {getattr(settings, key) for settings in hosts.values()}
    if len(values) > 1:
        instead = f", or pass {option}" if option else ""
        raise RolloutError(
            f"hosts disagree on {key} ({sorted(values, key=str)}): set it for the whole "
            f"inventory{instead}"
        )
    return values.pop()


def unavailable_limit(hosts: dict[str, GpuSettings], batch_size: int | None) -> int:
    """Hosts out of service at once: --batch-size, else upgrade_max_unavailable, else
    upgrade_batch_size."""
    if batch_size is not None:
        return batch_size
    max_unavailable = fleet_rule(hosts, "upgrade_max_unavailable", "--batch-size")
    if max_unavailable is not None:
        return unavailable_budget(max_unavailable, len(hosts))
    return int(fleet_rule(hosts, "upgrade_batch_size", "--batch-size"))


def next_batch(pending: list[str], unavailable: set[str], limit: int) -> list[str]:
    """
    The next hosts to upgrade: the pending hosts already out of service (upgrading them takes
    nothing more away), then as many others as ``limit`` leaves room for once every host out of
    service is counted.
    """
    out_of_service = [host for host in pending if host in unavailable]
    room = max(0, limit - len(unavailable))
    return out_of_service + [host for host in pending if host not in unavailable][:room]


def batch_plan(pending: list[str], unavailable: set[str], limit: int) -> list[list[str]]:
    """The batches ``next_batch`` makes if every host succeeds; the nodes out of service stay
    so (gpufleet resumes only the nodes it drained)."""
    plan: list[list[str]] = []
    while batch := next_batch(pending, unavailable, limit):
        plan.append(batch)
        pending = [host for host in pending if host not in batch]
    return plan


def say(line: str) -> None:
    # Flushed: a rollout runs for hours, often piped into a log.
    print(line, flush=True)


def run_batch(inventory: str, hosts: list[str], pyinfra_args: list[str]) -> list[str]:
    """Run the upgrade deploy on ``hosts``; return those that failed (all, when it crashed)."""
    process = subprocess.run(
        [*PYINFRA, "-y", "--json", *limits(hosts), *pyinfra_args, inventory, DEPLOY],
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


def limits(hosts: list[str]) -> list[str]:
    # One --limit per host: a pattern is one name or group (comma-joined names match nothing).
    return [argument for host in hosts for argument in ("--limit", host)]


def result_stamp(host: str, settings: GpuSettings) -> int | None:
    """When the host's verification result was last written (ns), None when it never was."""
    try:
        return result_path(settings.gpu_results_dir, host).stat().st_mtime_ns
    except FileNotFoundError:
        return None


class Fleet:
    """The inventory's hosts as a rollout reaches them: pyinfra's facts, Slurm on the hosts."""

    def __init__(self, inventory: str, pyinfra_args: list[str]) -> None:
        self.inventory = inventory
        self.pyinfra_args = pyinfra_args
        self.settings = inventory_settings(inventory, pyinfra_args)
        # The hosts that answered; one that did not fails when its batch runs.
        self.hosts: dict[str, RolloutHostInfo] = self.facts([], ROLLOUT_HOST)
        slurm_names = {
            name: settings.slurm_node_name or node_name(self.host(name)["hostname"])
            for name, settings in self.settings.items()
            if settings.gpu_scheduler is Scheduler.SLURM
        }
        self.nodes = {name: node for name, node in slurm_names.items() if node is not None}
        # Slurm hosts that did not answer and have no slurm_node_name: never upgraded undrained.
        self.unnamed = [name for name, node in slurm_names.items() if node is None]

    def facts(self, hosts: list[str], fact: str, *arguments: str) -> dict[str, Any]:
        """``fact`` of each of ``hosts`` (none: all) that answered."""
        process = subprocess.run(
            [*PYINFRA, "--json", *limits(hosts), *self.pyinfra_args, self.inventory, "fact",
             fact, *arguments],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        # {"<fact> (<arguments>)": {host: value}}: one fact per call here.
        try:
            by_host: dict[str, Any] = next(iter(json.loads(process.stdout or "{}").values()), {})
        except (json.JSONDecodeError, AttributeError):
            return {}
        return {host: value for host, value in by_host.items() if value is not None}

    def host(self, name: str) -> RolloutHostInfo:
        return self.hosts.get(name) or RolloutHost.default()

    def node_state(self, host: str, slurm: SlurmNodesInfo) -> SlurmNode | None:
        return slurm["nodes"].get(self.nodes[host])

    def skip_reason(self, host: str) -> str | None:
        if self.settings[host].upgrade_skip:
            return "skipped: upgrade_skip is set in its data"
        if self.host(host)["skip_file"]:
            return f"skipped: {SKIP_FILE} exists on the host"
        return None

    def slurm_host(self, avoid: list[str]) -> str | None:
        """A Slurm host to run scontrol and squeue on: one not being upgraded, if any."""
        candidates = [host for host in self.nodes if host in self.hosts]
        return next((h for h in candidates if h not in avoid), next(iter(candidates), None))

    def slurm(self, hosts: list[str], avoid: Sequence[str] = ()) -> SlurmNodesInfo:
        """The Slurm state of ``hosts``' nodes, read on one host of the cluster."""
        where = self.slurm_host(list(avoid))
        nodes = [self.nodes[host] for host in hosts if host in self.nodes]
        if where is None or not nodes:
            return {"nodes": {}, "jobs": {}, "errors": []}
        answer = self.facts([where], SLURM_NODES, f"nodes={json.dumps(nodes)}").get(where)
        if answer is None:
            return {"nodes": {}, "jobs": {}, "errors": [f"no Slurm answer from {where}"]}
        return cast(SlurmNodesInfo, answer)

    def scontrol(self, updates: list[str], avoid: list[str]) -> str | None:
        """Run ``scontrol update`` with each of ``updates``; None, or why it failed."""
        where = self.slurm_host(avoid)
        if where is None or not updates:
            return None if not updates else "no Slurm host answered"
        command = " && ".join(f"scontrol update {update}" for update in updates)
        process = subprocess.run(
            [*PYINFRA, "-y", "--limit", where, *self.pyinfra_args, self.inventory, "exec", "--",
             command],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return None if process.returncode == 0 else pyinfra_error(process.stderr)

    def unavailable(self, hosts: list[str], slurm: SlurmNodesInfo) -> set[str]:
        return {
            host
            for host in hosts
            if host in self.nodes
            and node_unavailable((self.node_state(host, slurm) or UNKNOWN_NODE)["state"])
        }


def node_name(hostname: str | None) -> str | None:
    """A host's short name as its Slurm node name, when it has the shape of one."""
    return hostname if hostname is not None and NODE_NAME.fullmatch(hostname) else None


def drain_update(node: str, reason: str) -> str:
    return shlex.join([f"NodeName={node}", "State=DRAIN", f"Reason={reason}"])


def resume_update(node: str) -> str:
    return shlex.join([f"NodeName={node}", "State=RESUME"])


def slurm_errors(slurm: SlurmNodesInfo) -> str:
    return "; ".join(dict.fromkeys(slurm["errors"])) or "sinfo listed none of the nodes"


def node_summary(node: SlurmNode | None) -> str:
    """sinfo's state of a node and its reason, e.g. "drained (disk swap)"."""
    if node is None:
        return "not in the cluster"
    return node["state"] + (f" ({node['reason']})" if node["reason"] else "")


def jobs_line(jobs: list[SlurmJob]) -> str:
    return ", ".join(f"{job['job_id']} ({job['user']}, {job['name']})" for job in jobs)


def target_of(fleet: Fleet, override: DriverOverride | None) -> str:
    """What the rollout installs: the override, the inventory's one pin, or "inventory"."""
    if override is not None:
        return override.version
    pins = {settings.nvidia_driver_version for settings in fleet.settings.values()}
    return str(pins.pop()) if len(pins) == 1 and None not in pins else "inventory"


def dry_run(
    inventory: str,
    batch_size: int | None = None,
    pyinfra_args: list[str] | None = None,
    override: DriverOverride | None = None,
) -> int:
    """
    List the batches (with the nodes' Slurm states and jobs), then log each host's plan,
    changing nothing; pyinfra's exit status (1 when a host failed).
    """
    pyinfra_args = pyinfra_args or []
    fleet = Fleet(inventory, pyinfra_args)
    names = list(fleet.settings)
    pending = [host for host in names if fleet.skip_reason(host) is None]
    slurm = fleet.slurm(names)
    plan = batch_plan(
        pending, fleet.unavailable(names, slurm), unavailable_limit(fleet.settings, batch_size)
    )
    for number, batch in enumerate(plan, 1):
        say(f"batch {number}/{len(plan)}: {', '.join(batch)}")
    if fleet.nodes and not slurm["nodes"]:
        say(f"Slurm did not answer ({slurm_errors(slurm)}): the rollout would stop here")
    for host in names:
        skip = fleet.skip_reason(host)
        if skip:
            say(f"{host}: {skip}")
        elif host in fleet.nodes:
            node = fleet.nodes[host]
            jobs = jobs_line(slurm["jobs"].get(node, [])) or "none"
            say(
                f"{host}: Slurm node {node}: {node_summary(slurm['nodes'].get(node))}; jobs: {jobs}"
            )
    override_args = override.pyinfra_args() if override else []
    command = dry_run_command(inventory, [*pyinfra_args, *override_args])
    status = subprocess.run(command, stdin=subprocess.DEVNULL, check=False).returncode
    if status != 0:
        print("rollout: the dry run failed, see pyinfra's output above", file=sys.stderr)
    return status


def dry_run_command(inventory: str, pyinfra_args: list[str]) -> list[str]:
    # -y: without it pyinfra asks whether to go on when a host cannot be reached (only when some
    # others can), and a dry run has nobody to answer. It also skips the table of detected
    # changes; each host's plan is logged by the deploy itself.
    return [*PYINFRA, "-y", "--dry", *pyinfra_args, inventory, DEPLOY]


def roll_out(
    inventory: str,
    batch_size: int | None = None,
    pyinfra_args: list[str] | None = None,
    override: DriverOverride | None = None,
) -> Rollout:
    """
    Upgrade the inventory batch by batch under its rules, saying where it is, recording every
    transition beside the inventory; an interrupted rollout is taken up by the same call.
    """
    pyinfra_args = pyinfra_args or []
    try:
        with rollout_lock(inventory):
            # The inventory's own data (without the override), for its pins.
            fleet = Fleet(inventory, pyinfra_args)
            record = RolloutFile.open(inventory, target_of(fleet, override), list(fleet.settings))
            run_args = [*pyinfra_args, *(override.pyinfra_args() if override else [])]
            Upgrade(fleet, record, run_args, unavailable_limit(fleet.settings, batch_size)).run()
    except RolloutLocked as error:
        raise RolloutError(str(error)) from None
    rollout = Rollout.of(record.record)
    if override is not None:
        changed = rollout.done + rollout.verification_failed
        rollout.warnings = pin_warnings(fleet.settings, changed, override.version)
    return rollout


@dataclass
class Upgrade:
    """One run of a rollout: batches under the rules until every host is done or it stops."""

    fleet: Fleet
    record: RolloutFile
    run_args: list[str]
    limit: int
    batches_run: int = 0

    def failures(self) -> int:
        return len(self.record.record.hosts_in(HostPhase.FAILED))

    def run(self) -> None:
        names = list(self.fleet.settings)
        for host in self.record.record.hosts_in(*TO_DO, HostPhase.FAILED):
            skip = self.fleet.skip_reason(host)
            if skip:
                self.record.move(host, HostPhase.SKIPPED, skip)
            elif self.record.record.hosts[host].phase is HostPhase.FAILED:
                self.record.move(host, HostPhase.PENDING, "failed in an earlier run, tried again")
        max_failed = int(fleet_rule(self.fleet.settings, "upgrade_max_failed"))
        while pending := self.record.record.hosts_in(*TO_DO):
            slurm = self.fleet.slurm(names)
            if self.fleet.nodes and not slurm["nodes"]:
                say(f"rollout: stopped: Slurm did not answer ({slurm_errors(slurm)})")
                return
            unavailable = self.fleet.unavailable(names, slurm)
            self.note_nodes_before(pending, slurm)
            batch = next_batch(pending, unavailable, self.limit)
            if not batch:
                say(
                    f"rollout: stopped: {len(unavailable)} host(s) out of service "
                    f"({', '.join(sorted(unavailable))}); at most {self.limit} at once"
                )
                return
            plan = batch_plan(pending, unavailable, self.limit)
            self.batches_run += 1
            label = f"batch {self.batches_run}/{self.batches_run + len(plan) - 1}"
            say(f"{label}: {', '.join(batch)}")
            failed = self.upgrade(label, batch, unavailable)
            say(f"{label}: failed ({', '.join(failed)})" if failed else f"{label}: done")
            if self.failures() >= max_failed:
                if self.record.record.hosts_in(*TO_DO):
                    say(f"rollout: stopped: {self.failures()} host(s) failed; "
                        f"upgrade_max_failed is {max_failed}")  # fmt: skip
                return

    def note_nodes_before(self, hosts: list[str], slurm: SlurmNodesInfo) -> None:
        """Record each node's state when the rollout first saw it."""
        for host in hosts:
            entry = self.record.record.hosts[host]
            node = self.fleet.nodes.get(host)
            if node is None or entry.node is not None:
                continue
            found = slurm["nodes"].get(node, {"state": "unknown", "reason": None})
            entry.node = node
            entry.node_state_before = found["state"]
            entry.node_reason_before = found["reason"]
        self.record.save()

    def upgrade(self, label: str, batch: list[str], unavailable: set[str]) -> list[str]:
        """Drain, wait, upgrade, verify and resume ``batch``; the hosts that failed."""
        fleet, whole_batch = self.fleet, batch
        for host in batch:
            if host in fleet.unnamed:
                note = (
                    "its Slurm node is unknown: the host did not answer or its hostname is no "
                    "node name; set slurm_node_name"
                )
                self.record.move(host, HostPhase.FAILED, note)
        batch = [host for host in batch if host not in fleet.unnamed]
        slurm_hosts = [host for host in batch if host in fleet.nodes]
        to_drain = [host for host in slurm_hosts if host not in unavailable]
        for host in batch:
            self.record.move(
                host, HostPhase.DRAINING if host in slurm_hosts else HostPhase.UPGRADING
            )
        updates = [drain_update(fleet.nodes[host], self.drain_reason(host)) for host in to_drain]
        problem = fleet.scontrol(updates, avoid=batch)
        if problem is not None:
            for host in to_drain:
                self.record.move(
                    host, HostPhase.FAILED, f"could not drain its Slurm node: {problem}"
                )
            batch = [host for host in batch if host not in to_drain]
        ready = self.wait_for_jobs(label, batch, slurm_hosts)
        for host in ready:
            if host in slurm_hosts:
                self.record.move(host, HostPhase.UPGRADING)
        stamps = {host: result_stamp(host, fleet.settings[host]) for host in ready}
        started = time.monotonic()
        failed = run_batch(fleet.inventory, ready, self.run_args) if ready else []
        upgrade_seconds = round(time.monotonic() - started, 1)
        for host in ready:
            entry = self.record.record.hosts[host]
            entry.driver_changed = result_stamp(host, fleet.settings[host]) != stamps[host]
            entry.upgrade_seconds = upgrade_seconds
            if host not in failed:
                self.record.move(host, HostPhase.DONE)
            else:
                note = (
                    "upgraded, verification failed"
                    if entry.driver_changed
                    else "the upgrade failed"
                )
                if host in slurm_hosts:
                    note += "; its node stays drained"
                self.record.move(host, HostPhase.FAILED, note)
        self.mark_failed([host for host in ready if host in failed and host in slurm_hosts], batch)
        self.resume([host for host in ready if host not in failed], batch)
        return [
            host for host in whole_batch if self.record.record.hosts[host].phase is HostPhase.FAILED
        ]

    def mark_failed(self, hosts: list[str], batch: list[str]) -> None:
        """Say in the Reason of the nodes gpufleet drained why they stay drained."""
        ours = [host for host in hosts if self.drained_here(host)]
        updates = []
        for host in ours:
            # The note's first part: "upgraded, verification failed" or "the upgrade failed".
            failure = (self.record.record.hosts[host].note or "").split(";")[0]
            reason = f"{self.drain_reason(host)} failed: {failure}"
            updates.append(drain_update(self.fleet.nodes[host], reason))
        problem = self.fleet.scontrol(updates, avoid=batch)
        if problem is not None:
            for host in ours:
                self.record.record.hosts[host].note = f"could not set its node's reason: {problem}"
            self.record.save()

    def drained_here(self, host: str) -> bool:
        """Whether gpufleet drained the host's node (not an operator before the rollout)."""
        entry = self.record.record.hosts[host]
        before = entry.node_state_before or "unknown"
        return not node_unavailable(before) or drained_by_gpufleet(entry.node_reason_before)

    def drain_reason(self, host: str) -> str:
        target = self.run_target(host)
        return drain_reason(self.fleet.host(host)["driver_version"], target)

    def run_target(self, host: str) -> str:
        target = self.record.record.target
        if target == "inventory":
            return self.fleet.settings[host].nvidia_driver_version or "the inventory's pin"
        return target

    def wait_for_jobs(self, label: str, batch: list[str], slurm_hosts: list[str]) -> list[str]:
        """Wait until no job holds the drained nodes of ``batch``; the hosts ready to upgrade
        (those whose upgrade_drain_timeout passed fail, and their nodes are resumed)."""
        waiting = [host for host in batch if host in slurm_hosts]
        started = time.monotonic()
        last_said = None
        while waiting:
            slurm = self.fleet.slurm(waiting, avoid=batch)
            # A node Slurm did not report on may still run jobs: it is waited for too.
            busy = {
                host: slurm["jobs"].get(self.fleet.nodes[host], [])
                for host in waiting
                if slurm["jobs"].get(self.fleet.nodes[host])
                or self.fleet.nodes[host] not in slurm["nodes"]
            }
            waiting = list(busy)
            elapsed = time.monotonic() - started
            for host in list(waiting):
                timeout = self.fleet.settings[host].upgrade_drain_timeout
                if timeout is not None and elapsed >= timeout:
                    waiting.remove(host)
                    jobs = jobs_line(busy[host]) or "Slurm did not say"
                    note = f"jobs still running after {timeout} s: {jobs}"
                    self.record.move(host, HostPhase.FAILED, f"{note}; its node was resumed")
                    self.resume([host], batch)
            if not waiting:
                break
            if last_said is None or time.monotonic() - last_said >= PROGRESS_SECONDS:
                running = "; ".join(
                    f"{host}: {jobs_line(busy[host]) or f'no answer ({slurm_errors(slurm)})'}"
                    for host in waiting
                )
                say(f"{label}: waiting {int(elapsed)} s for the drained nodes' jobs: {running}")
                last_said = time.monotonic()
            time.sleep(POLL_SECONDS)
        return [
            host for host in batch if self.record.record.hosts[host].phase is not HostPhase.FAILED
        ]

    def resume(self, hosts: list[str], batch: list[str]) -> None:
        """Resume the nodes of ``hosts`` that gpufleet drained; the others stay as they were."""
        slurm_hosts = [host for host in hosts if host in self.fleet.nodes]
        if not slurm_hosts:
            return
        slurm = self.fleet.slurm(slurm_hosts, avoid=batch)
        ours: list[str] = []
        others: list[str] = []
        for host in slurm_hosts:
            found = slurm["nodes"].get(self.fleet.nodes[host])
            (ours if found and drained_by_gpufleet(found["reason"]) else others).append(host)
        problem = self.fleet.scontrol([resume_update(self.fleet.nodes[h]) for h in ours], avoid=[])
        for host in others:
            entry = self.record.record.hosts[host]
            before = node_summary(
                {"state": entry.node_state_before or "unknown", "reason": entry.node_reason_before}
            )
            entry.note = f"its node was {before} before the rollout and is left so"
        if problem is not None:
            for host in ours:
                self.record.record.hosts[host].note = f"could not resume its node: {problem}"
        self.record.save()


def pin_warnings(hosts: dict[str, GpuSettings], changed: list[str], version: str) -> list[str]:
    """The hosts of ``changed`` the inventory pins to another version than ``version``."""
    by_pin: dict[str | None, list[str]] = {}
    for host in (name for name in hosts if name in changed):
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


def status_text(inventory: str) -> str:
    """The rollouts recorded beside ``inventory``: each host's phase, since when, and why."""
    found = records(inventory)
    if not found:
        return f"no rollout recorded beside {inventory}"
    blocks = []
    for path, record in found:
        counts = Counter(host.phase.value for host in record.hosts.values())
        totals = ", ".join(f"{count} {phase}" for phase, count in counts.items())
        lines = [f"rollout of {record.target}, started {record.started_at} ({path}): {totals}"]
        for name, host in record.hosts.items():
            since = host.history[-1][1] if host.history else record.started_at
            node = f" node {host.node}" if host.node else ""
            took = f" (upgrade {host.upgrade_seconds} s)" if host.upgrade_seconds else ""
            note = f": {host.note}" if host.note else ""
            lines.append(f"  {name} {host.phase.value} since {since}{node}{took}{note}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
