"""A real Slurm cluster on booted test hosts: one controller, the GPU hosts its compute nodes.

gpufleet's driver rollout drains a host's Slurm node before changing its driver, waits until no
job runs there and resumes it, running scontrol and squeue on the GPU hosts over SSH as root.
start_slurm() makes a test fleet such a cluster with Ubuntu 20.04's own Slurm (slurm-wlm 19.05
and munge, from the fleet's OS mirror: testbed.os_mirror.UBUNTU_ARCHIVE_SLURM): one munge key and
one slurm.conf on every host, slurmctld on the controller, slurmd and the client tools on each
node, every node named by its host's short hostname:

    cluster = start_slurm(fleet, fleet.hosts[0], fleet.hosts[1:])
    job = submit_job(fleet, cluster, fleet.hosts[1], "sleep 5")
    assert wait_for_job(fleet, cluster, job, {"COMPLETED"}).exit_code == "0:0"
    drain_node(fleet, cluster, fleet.hosts[2], "gpufleet: driver upgrade")

The helpers run Slurm's client tools on the controller unless told ``on=`` another host, and
return what Slurm says, parsed.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from testbed.fleet import Fleet, TestHost

CONTROLLER_PACKAGES = ("munge", "slurmctld", "slurm-client")
NODE_PACKAGES = ("munge", "slurmd", "slurm-client")
# Slurm 19.05 on Ubuntu 20.04 reads its configuration here (the units' ConditionPathExists=).
SLURM_CONF = "/etc/slurm-llnl/slurm.conf"
MUNGE_KEY = "/etc/munge/munge.key"
# What create-munge-key writes: 1024 random bytes.
MUNGE_KEY_BYTES = 1024
CLUSTER_NAME = "gpufleet-test"
PARTITION = "gpufleet"
START_TIMEOUT = 120.0
JOB_TIMEOUT = 120.0
POLL_INTERVAL = 0.5
COMMAND_TIMEOUT = 60.0
INSTALL_TIMEOUT = 600.0
LOG_LINES = 40
# One line per node: its name and state, as the operator's `sinfo -N` shows them.
SINFO_STATES = "sinfo -h -N -o '%N %t'"
# The fields of `slurmd -C` that describe a node's processors, as slurm.conf takes them.
HARDWARE_FIELDS = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
# Job states after which nothing changes any more (squeue(1), JOB STATE CODES).
FINAL_JOB_STATES = frozenset(
    {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
     "PREEMPTED", "TIMEOUT"}
)  # fmt: skip
# A key of `scontrol show -o`: a word at the start or after a space, then "=" (values such as
# OS=Linux 5.10 ... or a node's Reason hold spaces; TRES=cpu=1,... holds "=" but no key).
SCONTROL_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z][\w:/]*)=")
# scontrol appends who set a node's reason and when: "Reason=upgrade [root@2026-12-07T10:00:00]".
REASON_SUFFIX = re.compile(r"(?P<text>.*?) ?\[(?P<user>[^@\]]+)@(?P<time>[^\]]+)\]")

T = TypeVar("T")


class SlurmError(RuntimeError):
    """Slurm did not do what the test bed asked; the message carries what it said."""


@dataclass(frozen=True)
class SlurmCluster:
    """A started cluster: its hosts, each node's Slurm name and the slurm.conf they all have."""

    name: str
    controller: TestHost
    nodes: tuple[TestHost, ...]
    # TestHost.name -> Slurm node name (the host's `hostname -s`).
    node_names: dict[str, str] = field(hash=False)
    config: str

    def node_name(self, node: TestHost | str) -> str:
        """The Slurm node name of ``node``: a TestHost of the cluster, or already a node name."""
        if isinstance(node, str):
            if node not in self.node_names.values():
                raise KeyError(f"no Slurm node {node} in cluster {self.name}")
            return node
        if node.name not in self.node_names:
            raise KeyError(f"host {node.name} is not a node of cluster {self.name}")
        return self.node_names[node.name]

    def node_host(self, node: TestHost | str) -> TestHost:
        """The test host that is ``node`` (a TestHost or a Slurm node name)."""
        name = self.node_name(node)
        return next(host for host in self.nodes if self.node_names[host.name] == name)


@dataclass(frozen=True)
class JobInfo:
    """A job as `scontrol show job -o` reports it."""

    job_id: int
    state: str  # JobState: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ...
    reason: str  # why it waits (None when it does not): Resources, ReqNodeNotAvail, ...
    exit_code: str  # "<exit status>:<signal>", "0:0" for success
    node_list: str  # the nodes it ran on, a hostlist ("(null)" until it starts)
    start_time: datetime | None
    end_time: datetime | None
    fields: dict[str, str] = field(hash=False, repr=False)


@dataclass(frozen=True)
class NodeInfo:
    """A node as `scontrol show node -o` reports it."""

    name: str
    state: str  # e.g. IDLE, ALLOCATED, MIXED, IDLE+DRAIN, MIXED+DRAIN, DOWN*
    reason: str | None  # the reason as set, without scontrol's "[user@time]"
    reason_user: str | None  # who set it
    fields: dict[str, str] = field(hash=False, repr=False)

    @property
    def state_flags(self) -> tuple[str, ...]:
        """The state's words: ("IDLE", "DRAIN") of IDLE+DRAIN; "*" (not responding) dropped."""
        return tuple(word.rstrip("*~#%$@^!-") for word in self.state.split("+"))


def parse_scontrol_record(line: str) -> dict[str, str]:
    """The key=value pairs of one `scontrol show <entity> -o` line (values may hold spaces)."""
    keys = list(SCONTROL_KEY.finditer(line.strip()))
    text = line.strip()
    return {
        key[1]: text[key.end() : following.start() if following else len(text)].strip()
        for key, following in zip(keys, [*keys[1:], None], strict=True)
    }


def parse_time(value: str) -> datetime | None:
    """scontrol's times (2026-12-07T10:00:00); None for "Unknown", "None" and the like."""
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def parse_hardware(slurmd_c: str) -> dict[str, str]:
    """The processor fields of `slurmd -C`'s NodeName= line, as slurm.conf takes them."""
    for line in slurmd_c.splitlines():
        if line.startswith("NodeName="):
            record = parse_scontrol_record(line)
            return {key: record[key] for key in HARDWARE_FIELDS if key in record}
    raise SlurmError(f"slurmd -C printed no NodeName= line:\n{slurmd_c}")


@dataclass(frozen=True)
class NodeSpec:
    """One compute node's line of slurm.conf."""

    name: str
    address: str
    hardware: dict[str, str] = field(hash=False)


def slurm_conf(
    cluster_name: str, controller_name: str, controller_address: str, nodes: Sequence[NodeSpec]
) -> str:
    """The slurm.conf every host of the cluster gets (slurm.conf(5) of Slurm 19.05)."""
    node_lines = []
    for node in nodes:
        hardware = " ".join(f"{key}={value}" for key, value in node.hardware.items())
        node_lines.append(
            f"NodeName={node.name} NodeAddr={node.address} {hardware or 'CPUs=1'} State=UNKNOWN"
        )
    all_nodes = ",".join(node.name for node in nodes)
    return f"""\
# gpufleet test bed (testbed/slurm.py): the same file on every host of the cluster.
ClusterName={cluster_name}
# Addresses, not names, wherever Slurm allows: the test hosts have no DNS.
SlurmctldHost={controller_name}({controller_address})
SlurmUser=slurm
AuthType=auth/munge
CryptoType=crypto/munge
# What the Ubuntu 20.04 packages create (owned by slurm) and their units' PIDFile=.
StateSaveLocation=/var/lib/slurm-llnl/slurmctld
SlurmdSpoolDir=/var/lib/slurm-llnl/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
# No log files: the daemons then log to syslog, the host's journal (journalctl -u slurmd).
# No cgroup plugin: Slurm 19.05's need cgroup v1. They work in the test hosts where the machine's
# hierarchy is hybrid (its v1 controllers writable in the hosts), not where it is cgroup v2 only
# (Debian 12's default). So processes are tracked through /proc, tasks not bound, nothing counted.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
# The test hosts send no mail (the default, /usr/bin/mail, is not installed: an error per start).
MailProg=/bin/true
# The limits of the submitting ssh session mean nothing on the node.
PropagateResourceLimits=NONE
SchedulerType=sched/builtin
SelectType=select/cons_res
SelectTypeParameters=CR_CPU
# A node set DOWN for any reason (a test host the rollout rebooted) returns when its slurmd
# registers.
ReturnToService=2
# Finished jobs stay visible to `scontrol show job` for an hour: longer than any test.
MinJobAge=3600
# Test timings: a silent slurmd is DOWN within a minute (the default 300 s: over five); a
# cancelled job's processes are killed 5 s after SIGTERM.
SlurmdTimeout=30
MessageTimeout=10
KillWait=5
InactiveLimit=0
{chr(10).join(node_lines)}
PartitionName={PARTITION} Nodes={all_nodes} Default=YES MaxTime=INFINITE State=UP
"""


def hosts_file(entries: Sequence[tuple[str, str]]) -> str:
    """/etc/hosts naming every host of the cluster. The test hosts have none and no DNS, and
    munged ("Failed to resolve host") and slurmctld ("slurm_auth_get_host: Lookup failed") look
    names up: without it jobs run, but each lookup logs an error."""
    lines = [f"{address}\t{name}" for name, address in entries]
    return (
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "# The Slurm cluster of the gpufleet test bed (testbed/slurm.py).\n"
        + "".join(f"{line}\n" for line in lines)
    )


def run_on(fleet: Fleet, host: TestHost, command: str, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run ``command`` on ``host`` as root; its stdout, or SlurmError with all it printed."""
    result = fleet.ssh(host, command, timeout=timeout)
    if result.returncode != 0:
        raise SlurmError(
            f"{host.name}: `{command}` exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result.stdout


def on_each(hosts: Sequence[TestHost], action: Callable[[TestHost], T]) -> list[T]:
    """``action`` on every host at once (each waits on its host, not on this machine's CPUs);
    the results in the hosts' order, or one SlurmError naming every failure."""
    with ThreadPoolExecutor(max_workers=max(len(hosts), 1)) as pool:
        futures = [pool.submit(action, host) for host in hosts]
        errors = [str(error) for future in futures if (error := future.exception()) is not None]
    if errors:
        raise SlurmError("\n\n".join(errors))
    return [future.result() for future in futures]


def write_file(
    fleet: Fleet, host: TestHost, path: str, content: bytes, mode: str, owner: str = "root:root"
) -> None:
    """Write ``content`` to ``path`` on ``host``, owned and moded as given, replaced atomically
    so a daemon never reads half a file."""
    encoded = base64.b64encode(content).decode()
    temporary = f"{path}.gpufleet-new"
    run_on(
        fleet,
        host,
        f"mkdir -p {shlex.quote(os.path.dirname(path))}"
        f" && printf %s {shlex.quote(encoded)} | base64 -d > {shlex.quote(temporary)}"
        f" && chown {shlex.quote(owner)} {shlex.quote(temporary)}"
        f" && chmod {shlex.quote(mode)} {shlex.quote(temporary)}"
        f" && mv {shlex.quote(temporary)} {shlex.quote(path)}",
    )


def install_packages(fleet: Fleet, host: TestHost, packages: Sequence[str]) -> None:
    """apt-get install ``packages`` from the fleet's OS mirror, without Recommends (the mirror
    holds Slurm without them)."""
    names = " ".join(shlex.quote(name) for name in packages)
    run_on(
        fleet,
        host,
        "export DEBIAN_FRONTEND=noninteractive && apt-get update -q"
        f" && apt-get install -y -q --no-install-recommends {names}",
        timeout=INSTALL_TIMEOUT,
    )


def short_hostname(fleet: Fleet, host: TestHost) -> str:
    """What slurmd calls its node (`hostname -s`), so the name slurm.conf must give it."""
    return run_on(fleet, host, "hostname -s").strip()


def node_hardware(fleet: Fleet, host: TestHost) -> dict[str, str]:
    """The node's processors as slurmd sees them (`slurmd -C`): a node configured with more
    than it has would be drained as invalid."""
    return parse_hardware(run_on(fleet, host, "slurmd -C"))


def unit_report(fleet: Fleet, host: TestHost, units: Sequence[str]) -> str:
    """`systemctl status` and the journal of ``units`` on ``host``, for an error message."""
    names = " ".join(shlex.quote(unit) for unit in units)
    journal = " ".join(f"-u {shlex.quote(unit)}" for unit in units)
    result = fleet.ssh(
        host,
        f"systemctl status --no-pager --full --lines=0 {names}; "
        f"journalctl --no-pager --quiet -n {LOG_LINES} {journal}",
        timeout=COMMAND_TIMEOUT,
    )
    return f"--- {host.name}: {' '.join(units)}\n{result.stdout}{result.stderr}"


def start_units(fleet: Fleet, host: TestHost, units: Sequence[str]) -> None:
    """Enable and (re)start ``units`` in order: a restart, so that a key or configuration
    written since the package started the unit is read."""
    for unit in units:
        quoted = shlex.quote(unit)
        result = fleet.ssh(
            host,
            f"systemctl enable --quiet {quoted} && systemctl restart {quoted}",
            timeout=COMMAND_TIMEOUT,
        )
        if result.returncode != 0:
            raise SlurmError(
                f"{host.name}: {unit} did not start: {result.stderr.strip()}\n"
                + unit_report(fleet, host, units)
            )


def parse_sinfo_states(output: str) -> dict[str, str]:
    """Node name -> short state (idle, alloc, mix, down*, drain, drng, ...) of SINFO_STATES."""
    return dict(line.split(maxsplit=1) for line in output.splitlines() if line.strip())


def wait_until_idle(
    fleet: Fleet, cluster: SlurmCluster, timeout: float = START_TIMEOUT
) -> dict[str, str]:
    """Wait until sinfo on the controller shows every node idle; on timeout, SlurmError with
    sinfo's states and the units and journals of the controller and of every node not idle."""
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    failure = ""
    while time.monotonic() < deadline:
        result = fleet.ssh(cluster.controller, SINFO_STATES, timeout=COMMAND_TIMEOUT)
        if result.returncode == 0:
            states = parse_sinfo_states(result.stdout)
            if all(states.get(name) == "idle" for name in cluster.node_names.values()):
                return states
        else:
            failure = result.stderr.strip()
        time.sleep(POLL_INTERVAL)
    stuck = [host for host in cluster.nodes if states.get(cluster.node_name(host)) != "idle"]
    reports = [unit_report(fleet, cluster.controller, ("munge", "slurmctld"))]
    reports += [unit_report(fleet, host, ("munge", "slurmd")) for host in stuck]
    raise SlurmError(
        f"Slurm nodes not idle within {timeout:.0f}s: {states or failure or 'no sinfo'}\n"
        + "\n".join(reports)
    )


def start_slurm(
    fleet: Fleet,
    controller: TestHost,
    nodes: Sequence[TestHost],
    timeout: float = START_TIMEOUT,
) -> SlurmCluster:
    """Make ``controller`` Slurm's controller and ``nodes`` its compute nodes, all idle.

    Installs the packages from the fleet's OS mirror, writes one munge key, one slurm.conf and
    an /etc/hosts naming all of them to every host, starts munge and slurmctld on the
    controller, munge and slurmd on the nodes, and waits (``timeout``) until every node is idle.
    """
    if not nodes:
        raise ValueError("a Slurm cluster needs at least one node")
    if controller in nodes:
        raise ValueError(f"{controller.name} cannot be both the controller and a node")
    hosts = [controller, *nodes]
    on_each(
        hosts,
        lambda host: install_packages(
            fleet, host, CONTROLLER_PACKAGES if host == controller else NODE_PACKAGES
        ),
    )
    names = on_each(hosts, lambda host: short_hostname(fleet, host))
    hardware = on_each(nodes, lambda host: node_hardware(fleet, host))
    specs = [
        NodeSpec(name, host.address, processors)
        for host, name, processors in zip(nodes, names[1:], hardware, strict=True)
    ]
    config = slurm_conf(CLUSTER_NAME, names[0], controller.address, specs)
    etc_hosts = hosts_file([(name, host.address) for host, name in zip(hosts, names, strict=True)])
    # One key for the whole cluster: munge credentials are only valid where the key is the same.
    key = os.urandom(MUNGE_KEY_BYTES)

    def configure(host: TestHost) -> None:
        write_file(fleet, host, "/etc/hosts", etc_hosts.encode(), "0644")
        write_file(fleet, host, MUNGE_KEY, key, "0400", owner="munge:munge")
        write_file(fleet, host, SLURM_CONF, config.encode(), "0644")

    on_each(hosts, configure)
    start_units(fleet, controller, ("munge", "slurmctld"))
    on_each(nodes, lambda host: start_units(fleet, host, ("munge", "slurmd")))
    cluster = SlurmCluster(
        name=CLUSTER_NAME,
        controller=controller,
        nodes=tuple(nodes),
        node_names={host.name: name for host, name in zip(nodes, names[1:], strict=True)},
        config=config,
    )
    wait_until_idle(fleet, cluster, timeout)
    return cluster


def submit_job(
    fleet: Fleet,
    cluster: SlurmCluster,
    node: TestHost | str,
    command: str,
    on: TestHost | None = None,
) -> int:
    """Submit ``command`` as a batch job (as root, which Slurm allows by default) to run on
    ``node`` only; its job id. Its output goes to /tmp/slurm-<id>.out on the node."""
    result = run_on(
        fleet,
        on or cluster.controller,
        f"sbatch --parsable --nodelist={shlex.quote(cluster.node_name(node))}"
        " --job-name=gpufleet-test --chdir=/tmp --output=/tmp/slurm-%j.out"
        f" --wrap={shlex.quote(command)}",
    )
    # --parsable prints "<id>" or "<id>;<cluster>".
    return int(result.strip().split(";")[0])


def job_info(
    fleet: Fleet, cluster: SlurmCluster, job_id: int, on: TestHost | None = None
) -> JobInfo:
    """The job's state, exit code, nodes and times, read from `scontrol show job -o`."""
    output = run_on(fleet, on or cluster.controller, f"scontrol show job -o {int(job_id)}")
    fields = parse_scontrol_record(output)
    return JobInfo(
        job_id=int(fields["JobId"]),
        state=fields["JobState"],
        reason=fields.get("Reason", ""),
        exit_code=fields["ExitCode"],
        node_list=fields.get("NodeList", ""),
        start_time=parse_time(fields.get("StartTime", "")),
        end_time=parse_time(fields.get("EndTime", "")),
        fields=fields,
    )


def wait_for_job(
    fleet: Fleet,
    cluster: SlurmCluster,
    job_id: int,
    states: Collection[str],
    timeout: float = JOB_TIMEOUT,
    until: Callable[[JobInfo], bool] | None = None,
) -> JobInfo:
    """Wait until the job is in one of ``states`` (and meets ``until``, e.g. the scheduler gave
    a pending job its reason); SlurmError when it ends in another state or the time runs out,
    with the job's record."""
    deadline = time.monotonic() + timeout
    while True:
        job = job_info(fleet, cluster, job_id)
        if job.state in states and (until is None or until(job)):
            return job
        if job.state in FINAL_JOB_STATES or time.monotonic() > deadline:
            raise SlurmError(
                f"job {job_id} is {job.state} (exit code {job.exit_code}, reason {job.reason}),"
                f" not {' or '.join(sorted(states))}: {job.fields}"
            )
        time.sleep(POLL_INTERVAL)


def node_info(
    fleet: Fleet, cluster: SlurmCluster, node: TestHost | str, on: TestHost | None = None
) -> NodeInfo:
    """The node's state and reason, read from `scontrol show node -o` (on ``on``, by default
    the controller)."""
    name = cluster.node_name(node)
    output = run_on(fleet, on or cluster.controller, f"scontrol show node -o {shlex.quote(name)}")
    fields = parse_scontrol_record(output)
    reason = fields.get("Reason")
    suffix = REASON_SUFFIX.fullmatch(reason) if reason else None
    return NodeInfo(
        name=fields["NodeName"],
        state=fields["State"],
        reason=suffix["text"] if suffix else reason,
        reason_user=suffix["user"] if suffix else None,
        fields=fields,
    )


def wait_for_node(
    fleet: Fleet,
    cluster: SlurmCluster,
    node: TestHost | str,
    condition: Callable[[NodeInfo], bool],
    what: str,
    timeout: float = JOB_TIMEOUT,
) -> NodeInfo:
    """Wait until the node's record meets ``condition`` (described by ``what``, e.g. "idle")."""
    deadline = time.monotonic() + timeout
    while True:
        info = node_info(fleet, cluster, node)
        if condition(info):
            return info
        if time.monotonic() > deadline:
            raise SlurmError(f"node {info.name} not {what} within {timeout:.0f}s: {info}")
        time.sleep(POLL_INTERVAL)


def jobs_on_node(
    fleet: Fleet, cluster: SlurmCluster, node: TestHost | str, on: TestHost | None = None
) -> list[int]:
    """Ids of the jobs running (or being killed) on the node: what a drain waits for."""
    output = run_on(
        fleet,
        on or cluster.controller,
        f"squeue -h -t RUNNING,COMPLETING -w {shlex.quote(cluster.node_name(node))} -o %i",
    )
    return [int(line) for line in output.split()]


def drain_node(
    fleet: Fleet,
    cluster: SlurmCluster,
    node: TestHost | str,
    reason: str,
    on: TestHost | None = None,
) -> None:
    """Drain the node as an operator would: no new jobs start there, running ones finish."""
    name = cluster.node_name(node)
    run_on(
        fleet,
        on or cluster.controller,
        f"scontrol update NodeName={shlex.quote(name)} State=DRAIN"
        f" {shlex.quote(f'Reason={reason}')}",
    )


def resume_node(
    fleet: Fleet, cluster: SlurmCluster, node: TestHost | str, on: TestHost | None = None
) -> None:
    """Return a drained node to service (its reason is cleared)."""
    name = cluster.node_name(node)
    run_on(
        fleet,
        on or cluster.controller,
        f"scontrol update NodeName={shlex.quote(name)} State=RESUME",
    )
