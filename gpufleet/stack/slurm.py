"""
What a rollout needs to know of Slurm: which node states take a node out of service, the reason
gpufleet drains a node with (and so whether gpufleet drained it), and the rollout's rules.
Sources: sinfo(1) "NODE STATE CODES", scontrol(1) "update NodeName" (SOURCES.md, "Slurm").
"""

from __future__ import annotations

import math
import re
from enum import Enum


class Scheduler(str, Enum):
    """gpu_scheduler: who a rollout asks before it takes a host out of service."""

    NONE = "none"
    SLURM = "slurm"


# Slurm node names as gpufleet writes them into scontrol's command line: a host name.
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# A node gpufleet drained carries this reason: the only nodes it resumes.
REASON_PREFIX = "gpufleet: "
# sinfo's long state names (%T) of a node that takes no new work (sinfo(1) of slurm-wlm 19.05,
# NODE STATE CODES). "unknown": the controller has not heard from it yet.
UNAVAILABLE_STATES = frozenset(
    {"down", "drained", "draining", "drain", "fail", "failing", "maint", "future", "unknown",
     "power_down", "powering_down"}
)  # fmt: skip
# The flags sinfo appends to a state; "*" (not responding) alone takes a node out of service
# ("~" power saving, "#" powering up, "$" maintenance reservation, "@" pending reboot, "+" jobs
# completing).
STATE_FLAGS = "*~#!%$@^+-"
NOT_RESPONDING = "*"
# "2" hosts or "25%" of the fleet.
MAX_UNAVAILABLE = re.compile(r"([1-9]\d*)(%?)")


def node_unavailable(state: str) -> bool:
    """Whether a node in sinfo's ``state`` (e.g. "idle", "drained", "mixed*") takes no new jobs."""
    base = state.rstrip(STATE_FLAGS).lower()
    return base in UNAVAILABLE_STATES or NOT_RESPONDING in state[len(base) :]


def drain_reason(installed: str | None, target: str) -> str:
    """The reason gpufleet drains a node with, e.g. "gpufleet: driver 470.182.03 -> 470.239.06"."""
    return f"{REASON_PREFIX}driver {installed or 'none'} -> {target}"


def drained_by_gpufleet(reason: str | None) -> bool:
    return reason is not None and reason.startswith(REASON_PREFIX)


def unavailable_budget(max_unavailable: str, fleet_size: int) -> int:
    """Hosts out of service at once: a count, or a percentage of the fleet rounded down (at
    least one), as a Kubernetes Deployment's maxUnavailable is."""
    match = MAX_UNAVAILABLE.fullmatch(max_unavailable)
    if match is None:
        raise ValueError(f"not a host count or percentage: {max_unavailable!r}")
    number, percent = int(match.group(1)), match.group(2)
    return max(1, math.floor(fleet_size * number / 100)) if percent else number
