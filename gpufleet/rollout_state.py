"""
A rollout's state, in a file beside the inventory (`.gpufleet/rollout-<target>.json`), written
after every transition so that a controller killed at any point is resumed by the same command.
One lock per inventory folder (`.gpufleet/rollout.lock`) refuses a second rollout at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import IO

from pydantic import BaseModel, Field

STATE_DIR = ".gpufleet"


class HostPhase(str, Enum):
    PENDING = "pending"
    DRAINING = "draining"  # the node is drained; its jobs are still running
    UPGRADING = "upgrading"  # the driver changes, then the verification runs
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


# A resumed rollout keeps these; it takes every other host up again from the start.
FINAL_PHASES = (HostPhase.DONE, HostPhase.SKIPPED)
# What a run still has to do (a failed host is tried again by the next run, not the same one).
TO_DO = (HostPhase.PENDING, HostPhase.DRAINING, HostPhase.UPGRADING)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class HostRecord(BaseModel):
    phase: HostPhase = HostPhase.PENDING
    # (phase, when) of every transition, oldest first.
    history: list[tuple[HostPhase, str]] = Field(default_factory=list)
    node: str | None = None
    # The node's Slurm state and reason when the rollout first saw it.
    node_state_before: str | None = None
    node_reason_before: str | None = None
    # The driver changed (the verification ran): a failed host then runs the new one, unproven.
    driver_changed: bool = False
    # Seconds of its batch's upgrade deploy (package change, reboot, verification): the rest of a
    # rollout's time is its own (reading and draining nodes, waiting for jobs, resuming).
    upgrade_seconds: float | None = None
    note: str | None = None


class RolloutRecord(BaseModel):
    target: str
    started_at: str = Field(default_factory=now)
    hosts: dict[str, HostRecord]

    @property
    def finished(self) -> bool:
        return all(record.phase in FINAL_PHASES for record in self.hosts.values())

    def hosts_in(self, *phases: HostPhase) -> list[str]:
        return [name for name, record in self.hosts.items() if record.phase in phases]


def state_dir(inventory: str) -> Path:
    return Path(inventory).resolve().parent / STATE_DIR


def state_path(inventory: str, target: str) -> Path:
    # The target is a driver version or "inventory": a file name either way.
    return state_dir(inventory) / f"rollout-{re.sub(r'[^A-Za-z0-9._-]', '_', target)}.json"


class RolloutFile:
    """The record of one rollout, saved (atomically) after each change."""

    def __init__(self, path: Path, record: RolloutRecord) -> None:
        self.path = path
        self.record = record

    @classmethod
    def open(cls, inventory: str, target: str, hosts: list[str]) -> RolloutFile:
        """The unfinished rollout of ``target`` (its hosts not yet done taken up again), or a
        new one."""
        path = state_path(inventory, target)
        record = read_record(path)
        if record is None or record.finished or set(record.hosts) != set(hosts):
            record = RolloutRecord(target=target, hosts={name: HostRecord() for name in hosts})
        rollout = cls(path, record)
        for name in rollout.record.hosts_in(HostPhase.DRAINING, HostPhase.UPGRADING):
            rollout.record.hosts[name].note = "taken up again after an interrupted rollout"
        rollout.save()
        return rollout

    def move(self, host: str, phase: HostPhase, note: str | None = None) -> None:
        record = self.record.hosts[host]
        record.phase = phase
        record.history.append((phase, now()))
        record.note = note
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(self.record.model_dump_json(indent=2) + "\n")
        os.replace(partial, self.path)


def read_record(path: Path) -> RolloutRecord | None:
    try:
        return RolloutRecord.model_validate_json(path.read_text())
    except FileNotFoundError:
        return None


def records(inventory: str) -> list[tuple[Path, RolloutRecord]]:
    """Every rollout recorded beside ``inventory``, oldest first."""
    found = []
    for path in sorted(state_dir(inventory).glob("rollout-*.json")):
        record = read_record(path)
        if record is not None:
            found.append((path, record))
    return sorted(found, key=lambda item: item[1].started_at)


class RolloutLocked(RuntimeError):
    """Another rollout of the same inventory folder is running."""


@contextmanager
def rollout_lock(inventory: str) -> Iterator[None]:
    """Hold the inventory folder's rollout lock, or refuse, naming the holder."""
    path = state_dir(inventory) / "rollout.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RolloutLocked(
                f"another rollout of {inventory} is running ({holder(lock)}); wait for it, or "
                "stop it and run the same command again to take it up"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(json.dumps({"pid": os.getpid(), "since": now()}))
        lock.flush()
        yield


def holder(lock: IO[str]) -> str:
    lock.seek(0)
    try:
        found = json.loads(lock.read())
        return f"pid {found['pid']}, since {found['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
