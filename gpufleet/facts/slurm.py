"""
What a rollout reads of a host and of its Slurm cluster, each in one round trip. The rollout
controller reads them with `pyinfra --json INVENTORY fact gpufleet.facts.slurm.<Fact>`.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import TypedDict

from pyinfra.api import FactBase

from gpufleet.facts.arguments import require_lists
from gpufleet.stack.versions import upstream_version

# An operator's "leave this host alone" (named in the rollout's summary).
SKIP_FILE = "/etc/gpufleet/skip-upgrade"
# The package whose version is the installed driver's, on every branch and source.
DRIVER_PACKAGE_PATTERN = "libnvidia-compute-*"
# The jobs that hold a node: configuring, running, suspended, completing (squeue(1) JOB STATE
# CODES: CF, R, S, CG).
HOLDING_JOB_STATES = "CF,R,S,CG"


class RolloutHostInfo(TypedDict):
    hostname: str | None
    skip_file: bool
    driver_version: str | None


def parse_rollout_host(output: list[str]) -> RolloutHostInfo:
    info: RolloutHostInfo = {"hostname": None, "skip_file": False, "driver_version": None}
    for line in output:
        kind, _, value = line.partition("\t")
        if kind == "hostname" and value:
            info["hostname"] = value
        elif kind == "skip":
            info["skip_file"] = True
        elif kind == "driver" and value:
            info["driver_version"] = upstream_version(value)
    return info


class RolloutHost(FactBase[RolloutHostInfo]):
    """
    Returns the host's short name (Slurm's default node name), whether an operator asked the
    rollouts to leave it alone (SKIP_FILE) and the installed driver's upstream version.
    """

    @staticmethod
    def default() -> RolloutHostInfo:
        return parse_rollout_host([])

    def command(self) -> str:
        return (
            'printf "hostname\\t%s\\n" "$(hostname -s)"; '
            f'if [ -e {SKIP_FILE} ]; then printf "skip\\n"; fi; '
            "dpkg-query -W --showformat='${Status}\\t${Version}\\n' "
            f"{shlex.quote(DRIVER_PACKAGE_PATTERN)} 2>/dev/null "
            # Installed, held or not (gpufleet holds it: "hold ok installed").
            "| sed -nE 's/^(install|hold) ok installed\\t/driver\\t/p'; true"
        )

    def process(self, output: list[str]) -> RolloutHostInfo:
        return parse_rollout_host(output)


class SlurmNode(TypedDict):
    state: str
    reason: str | None


class SlurmJob(TypedDict):
    job_id: str
    state: str
    user: str
    name: str


class SlurmNodesInfo(TypedDict):
    # By node name: what sinfo reports; a node sinfo does not know is absent.
    nodes: dict[str, SlurmNode]
    # By node name: the jobs holding it.
    jobs: dict[str, list[SlurmJob]]
    # What sinfo or squeue printed besides their lines (e.g. the controller is unreachable).
    errors: list[str]


def parse_slurm_nodes(output: list[str]) -> SlurmNodesInfo | None:
    info: SlurmNodesInfo = {"nodes": {}, "jobs": {}, "errors": []}
    for line in output:
        if line == "no slurm":
            return None
        kind, _, rest = line.partition("|")
        if kind == "node":
            # The reason comes last: an operator's reason may hold "|".
            name, state, reason = (rest.split("|", 2) + ["", ""])[:3]
            info["nodes"][name] = {"state": state, "reason": None if reason == "none" else reason}
            info["jobs"].setdefault(name, [])
        elif kind == "job":
            node, job_id, state, user, name = (rest.split("|", 4) + [""] * 4)[:5]
            job: SlurmJob = {"job_id": job_id, "state": state, "user": user, "name": name}
            info["jobs"].setdefault(node, []).append(job)
        elif line.strip():
            info["errors"].append(line.strip())
    return info


class SlurmNodes(FactBase["SlurmNodesInfo | None"]):
    """
    Returns, for each of ``nodes``, its state (sinfo's long form, e.g. "idle", "drained",
    "mixed*") and reason, and the jobs holding it; None where the host has no Slurm client.
    Any node of a cluster answers for all of them.
    """

    @staticmethod
    def default() -> SlurmNodesInfo | None:
        return None

    def command(self, nodes: Sequence[str]) -> str:
        require_lists(self, nodes=nodes)
        names = " ".join(shlex.quote(node) for node in nodes)
        return (
            "if ! command -v sinfo >/dev/null 2>&1; then echo 'no slurm'; exit 0; fi; "
            f"sinfo --noheader --Node --nodes={shlex.quote(','.join(nodes))} "
            "--format='node|%N|%T|%E' 2>&1 | sort -u; "
            f"for node in {names}; do "
            f'squeue --noheader --nodelist="$node" --states={HOLDING_JOB_STATES} '
            '--format="job|$node|%i|%T|%u|%j" 2>&1; done; true'
        )

    def process(self, output: list[str]) -> SlurmNodesInfo | None:
        return parse_slurm_nodes(output)
