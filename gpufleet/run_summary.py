"""
The end of every run of gpufleet's deploys (gpu_host, verify, audit, driver_upgrade; each
rollout batch is one): one line per host, OK, CHANGED, REFUSED, FAILED or REBOOT REQUIRED, with
the root cause of every host that is not OK, printed after pyinfra's own results and written as
JSON to ``gpu_results_dir/run-<timestamp>.json``.

pyinfra has no end-of-run hook for deploy code, so the summary is printed when the process
exits (pyinfra's CLI exits right after the run, also after "No hosts remaining!"). The causes
come from what gpufleet recorded (refusals, reboots it may not do) and from the output of the
failed operation, with apt's warnings about gpufleet's own repositories first: an unreachable
mirror is a "W:" line of a repository step that succeeded, long before a package is missing.
"""

from __future__ import annotations

import atexit
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Protocol
from weakref import WeakKeyDictionary

from pyinfra.api import Host, State
from pyinfra.context import ctx_host, ctx_state

from gpufleet import version
from gpufleet.facts.pyinfra_internals import (
    dry_run,
    host_operations,
    in_pyinfra_cli,
    operation_output,
)
from gpufleet.settings import DATA_DEFAULTS
from gpufleet.stack import urls


class Outcome(str, Enum):
    OK = "OK"
    CHANGED = "CHANGED"
    REFUSED = "REFUSED"
    FAILED = "FAILED"
    REBOOT_REQUIRED = "REBOOT REQUIRED"
    # A dry run changes nothing; its plan is listed above the summary.
    PLANNED = "PLANNED"


@dataclass
class HostNotes:
    """What gpufleet learnt of one host while planning and running it."""

    results_dir: str
    repository_urls: tuple[str, ...] = ()
    refusal: list[str] = field(default_factory=list)
    reboot_reason: str | None = None
    # A failure gpufleet explained itself (a verification's verdict).
    failure: str | None = None


@dataclass(frozen=True)
class HostSummary:
    host: str
    outcome: Outcome
    cause: str  # "" for OK and CHANGED
    changed_operations: int

    def line(self, width: int) -> str:
        detail = self.cause or (
            f"{self.changed_operations} operation(s) changed" if self.changed_operations else ""
        )
        # One line per host, whatever the cause's own line breaks (a settings error's list).
        detail = " ".join(detail.split())
        return f"{self.host:<{width}}  {self.outcome.value:<15}  {detail}".rstrip()


# How gpufleet's JSON files write a moment (UTC).
UTC_TIMESTAMP = "%Y-%m-%dT%H:%M:%SZ"
# The run summaries' file names in gpu_results_dir, beside each host's <host>.json.
RUN_SUMMARY_PREFIX = "run-"
# Per run (pyinfra State): the notes of each host, by name.
_runs: WeakKeyDictionary[State, dict[str, HostNotes]] = WeakKeyDictionary()
# apt's warning and error lines ("W: Failed to fetch http://...", "E: Unable to locate ...").
_APT_MESSAGE = re.compile(r"^(?:W|E|Err):?\s")


def track(results_dir: str, repository_urls: tuple[str, ...] = ()) -> None:
    """Count the current host in this run's summary (entry deploys call it first)."""
    notes = _notes()
    notes.results_dir = results_dir
    notes.repository_urls = repository_urls


def record_refusal(problems: list[str]) -> None:
    _notes().refusal = problems


def record_reboot_required(state: State, host: Host, reason: str) -> None:
    """From an operation's function, when the host stops for a reboot it may not do."""
    notes = _runs.get(state, {}).get(host.name)
    if notes is not None:
        notes.reboot_reason = reason


def record_failure(state: State, host: Host, cause: str) -> None:
    """From an operation's function that fails its host with a cause of gpufleet's words."""
    notes = _runs.get(state, {}).get(host.name)
    if notes is not None:
        notes.failure = cause


def _notes() -> HostNotes:
    """The current host's notes, the run's summary registered at its first host."""
    state, host = ctx_state.get(), ctx_host.get()
    run = _runs.get(state)
    if run is None:
        run = _runs[state] = {}
        if in_pyinfra_cli():
            atexit.register(_print_and_write, state)
    return run.setdefault(host.name, HostNotes(DATA_DEFAULTS["gpu_results_dir"]))


def summarize(state: State) -> list[HostSummary]:
    """Each tracked host's outcome and cause, in inventory order."""
    run = _runs.get(state, {})
    summaries = []
    first_refused: dict[tuple[str, ...], str] = {}
    for host in state.inventory:
        notes = run.get(host.name)
        if notes is not None:
            summaries.append(_summarize_host(state, host, notes, first_refused))
        elif host in state.failed_hosts:
            # Failed before its deploy ran: pyinfra could not connect or read it.
            summaries.append(
                HostSummary(host.name, Outcome.FAILED, "not reached (see pyinfra's output)", 0)
            )
    return summaries


def _summarize_host(
    state: State, host: Host, notes: HostNotes, first_refused: dict[tuple[str, ...], str]
) -> HostSummary:
    operations = host_operations(state, host)
    changed = sum(1 for _, meta in operations if meta.is_complete() and meta.did_change())
    if notes.refusal:
        # Bad group data refuses every host alike: said once, as refuse_host says it.
        first = first_refused.setdefault(tuple(notes.refusal), host.name)
        if first != host.name:
            return HostSummary(host.name, Outcome.REFUSED, f"the same reasons as {first}", 0)
        more = f" (and {len(notes.refusal) - 1} more)" if len(notes.refusal) > 1 else ""
        return HostSummary(host.name, Outcome.REFUSED, notes.refusal[0] + more, 0)
    if notes.reboot_reason is not None:
        return HostSummary(host.name, Outcome.REBOOT_REQUIRED, notes.reboot_reason, changed)
    if host in state.failed_hosts:
        cause = notes.failure or failure_cause(operations, notes)
        return HostSummary(host.name, Outcome.FAILED, cause, changed)
    if dry_run():
        return HostSummary(host.name, Outcome.PLANNED, "", 0)
    outcome = Outcome.CHANGED if changed else Outcome.OK
    return HostSummary(host.name, outcome, "", changed)


class RanOperation(Protocol):
    """What the summary reads of pyinfra's OperationMeta."""

    def is_complete(self) -> bool: ...

    def did_succeed(self, _raise_if_not_complete: bool = True) -> bool: ...


def failure_cause(operations: Sequence[tuple[str, RanOperation]], notes: HostNotes) -> str:
    """The failed operation and its first error line, after apt's warnings about gpufleet's
    repositories (the root cause when a mirror is unreachable)."""
    warnings: list[str] = []
    locations = [urls.location(url).split("$(ARCH)")[0] for url in notes.repository_urls]
    for name, meta in operations:
        lines = operation_output(meta)
        warnings += [
            urls.redact_text(line.strip())
            for line in lines
            if _APT_MESSAGE.match(line) and any(place and place in line for place in locations)
        ]
        if meta.is_complete() and not meta.did_succeed(_raise_if_not_complete=False):
            error = _first_error(lines)
            # The operation's own name, without the deploys it runs in ("A | B | name").
            cause = f"{name.rsplit(' | ', 1)[-1]} failed" + (f": {error}" if error else "")
            return "; ".join([*dict.fromkeys(warnings), cause])
    return "; ".join([*dict.fromkeys(warnings), "failed (see the output above)"])


def _first_error(lines: list[str]) -> str:
    """apt's or docker's error line if there is one, else the last line printed."""
    stripped = [line.strip() for line in lines if line.strip()]
    for line in stripped:
        if line.startswith(("E:", "Error", "error:", "docker: Error")):
            return urls.redact_text(line)
    return urls.redact_text(stripped[-1]) if stripped else ""


def render(summaries: list[HostSummary]) -> str:
    width = max((len(summary.host) for summary in summaries), default=0)
    return "\n".join(summary.line(width) for summary in summaries)


def document(summaries: list[HostSummary], finished_at: datetime) -> dict[str, object]:
    return {
        "finished_at": finished_at.strftime(UTC_TIMESTAMP),
        "gpufleet_version": version(),
        "dry_run": dry_run(),
        "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]),
        "hosts": [
            {
                "host": summary.host,
                "outcome": summary.outcome.value,
                "cause": summary.cause,
                "changed_operations": summary.changed_operations,
            }
            for summary in summaries
        ],
    }


def _print_and_write(state: State) -> None:
    summaries = summarize(state)
    if not summaries:
        return
    sys.stderr.write(f"\n--> gpufleet summary\n{render(summaries)}\n")
    finished_at = datetime.now(timezone.utc)
    run = _runs.get(state, {})
    by_dir: dict[str, list[HostSummary]] = {}
    default_dir = DATA_DEFAULTS["gpu_results_dir"]
    for summary in summaries:
        notes = run.get(summary.host)
        by_dir.setdefault(notes.results_dir if notes else default_dir, []).append(summary)
    for results_dir, hosts in by_dir.items():
        stamp = finished_at.strftime("%Y%m%dT%H%M%S%fZ")
        path = Path(results_dir) / f"{RUN_SUMMARY_PREFIX}{stamp}.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(document(hosts, finished_at), indent=2) + "\n")
        except OSError as error:
            sys.stderr.write(f"gpufleet: could not write the run summary {path}: {error}\n")
            continue
        sys.stderr.write(f"    written to {path}\n")
