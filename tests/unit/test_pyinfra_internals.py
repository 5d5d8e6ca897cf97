"""
The pyinfra internals gpufleet reads (gpufleet/facts/pyinfra_internals.py), checked on a real
State built with pyinfra's API and run on @fake hosts: when an installed pyinfra moves or changes
one of them, these fail naming it, before a deploy silently reads a stale snapshot.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pyinfra
import pytest
from pyinfra.api import Config, Host, Inventory, State, deploy, operation
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.api.operations import run_ops
from pyinfra.api.state import StateOperationHostData, StateStage
from pyinfra.context import ctx_host, ctx_state
from pyinfra.operations import server

from gpufleet.facts import pyinfra_internals
from gpufleet.facts.pyinfra_internals import (
    changed_before_current_operation,
    changes_host,
    register_deploy_file,
)
from tests.fakehost import FIXTURE_KEY_DATA, converged_ubuntu_2004, prepare

PYINFRA_VERSION = version("pyinfra")
FAILING_COMMAND = "exit 3"
REPO_ROOT = Path(__file__).resolve().parents[2]
# As `pyinfra INVENTORY deploys/gpu_host.py` names it, run from the checkout.
ENTRY_FILE = "deploys/gpu_host.py"


def internal_changed(internal: str) -> str:
    return (
        f"pyinfra {PYINFRA_VERSION} changed {internal}: "
        "gpufleet/facts/pyinfra_internals.py must be updated"
    )


@dataclass(frozen=True)
class Observation:
    """What an operation saw of pyinfra's state while its commands were generated."""

    executing: bool
    current_op_hash: str | None
    changed_before: bool


@operation()
def observe(seen: list[Observation]):
    """
    Record the running operation's view, and change nothing.

    + seen: where the observation goes
    """
    state: State = ctx_state.get()
    host: Host = ctx_host.get()
    seen.append(
        Observation(
            state.is_executing,
            getattr(host, "current_op_hash", "missing"),
            changed_before_current_operation(state, host),
        )
    )
    yield from ()


@dataclass
class Run:
    """A planned deploy on two @fake hosts, with each host's operation metas and observations."""

    state: State
    metas: dict[str, dict[str, OperationMeta]]
    seen: dict[str, list[Observation]]

    def host(self, name: str) -> Host:
        return self.state.inventory.get_host(f"@fake/{name}")


def planned_run() -> Run:
    """
    Two @fake hosts through one deploy: a no-op, an observation, a command (which fails on
    "broken"), an observation. Planned, not run.
    """
    fake = {"fake_delay": 0, "fake_delay_jitter": 0}
    failing = {"fake_responses": {FAILING_COMMAND: {"success": False}}}
    inventory = Inventory(([("@fake/healthy", fake), ("@fake/broken", {**fake, **failing})], {}))
    state = State(inventory, Config())
    connect_all(state)
    metas: dict[str, dict[str, OperationMeta]] = {"healthy": {}, "broken": {}}
    seen: dict[str, list[Observation]] = {"healthy": [], "broken": []}

    @deploy("internals")
    def internals() -> None:
        name = ctx_host.get().name.removeprefix("@fake/")
        metas[name]["no-op"] = server.shell(name="no-op", commands=[])
        metas[name]["before"] = observe(name="before", seen=seen[name])
        metas[name]["change"] = server.shell(
            name="change", commands=[FAILING_COMMAND], _ignore_errors=True
        )
        metas[name]["after"] = observe(name="after", seen=seen[name])

    add_deploy(state, internals)
    return Run(state, metas, seen)


def op_hashes(run: Run, name: str) -> dict[str, str]:
    """Operation name -> hash on host ``name``, through State.ops[host][hash].operation_meta."""
    operations: Any = getattr(run.state, "ops", None)
    host = run.host(name)
    assert isinstance(operations, dict) and host in operations, internal_changed("State.ops")
    by_meta = {id(data.operation_meta): op_hash for op_hash, data in operations[host].items()}
    metas = run.metas[name]
    assert all(id(meta) in by_meta for meta in metas.values()), internal_changed(
        "State.ops[host][op_hash].operation_meta"
    )
    return {op_name: by_meta[id(meta)] for op_name, meta in metas.items()}


def test_every_internal_exists() -> None:
    internals = {
        "Host.op_hash_order": isinstance(
            getattr(planned_run().host("healthy"), "op_hash_order", None), list
        ),
        "StateOperationHostData.operation_meta": "operation_meta"
        in getattr(StateOperationHostData, "__annotations__", {}),
        "Host.current_op_hash": hasattr(Host, "current_op_hash"),
        "OperationMeta.is_complete()": callable(getattr(OperationMeta, "is_complete", None)),
        "OperationMeta.executed": isinstance(getattr(OperationMeta, "executed", None), property),
    }
    missing = [internal for internal, present in internals.items() if not present]
    assert missing == [], internal_changed(", ".join(missing))


def test_state_ops_holds_each_operations_meta_by_hash_in_run_order() -> None:
    run = planned_run()
    hashes = op_hashes(run, "healthy")
    order = run.state.get_op_order()
    assert [op_hash for op_hash in order if op_hash in hashes.values()] == list(hashes.values()), (
        internal_changed("State.get_op_order()")
    )
    host = run.host("healthy")
    assert host.op_hash_order == [op_hash for op_hash in order if op_hash in run.state.ops[host]], (
        internal_changed("Host.op_hash_order (the host's operations in run order)")
    )


def test_current_op_hash_names_the_operation_being_generated() -> None:
    run = planned_run()
    run_ops(run.state)
    for name in ("healthy", "broken"):
        hashes = op_hashes(run, name)
        # Each observation ran twice: planned (change detection), then executed.
        observed = [seen.current_op_hash for seen in run.seen[name]]
        assert observed == [hashes["before"], hashes["after"]] * 2, internal_changed(
            "Host.current_op_hash"
        )
        assert getattr(run.host(name), "current_op_hash", "missing") is None, internal_changed(
            "Host.current_op_hash (not reset after an operation)"
        )


def test_operation_meta_is_complete_and_executed_after_the_run_only() -> None:
    run = planned_run()
    metas = [meta for host_metas in run.metas.values() for meta in host_metas.values()]
    assert not any(meta.is_complete() or meta.executed for meta in metas), internal_changed(
        "OperationMeta.is_complete()/executed before the run"
    )
    run_ops(run.state)
    assert all(meta.is_complete() for meta in metas), internal_changed(
        "OperationMeta.is_complete()"
    )
    for name, host_metas in run.metas.items():
        assert host_metas["change"].executed, internal_changed(
            f"OperationMeta.executed (a command that {'failed' if name == 'broken' else 'ran'})"
        )
        assert not host_metas["no-op"].executed and not host_metas["before"].executed, (
            internal_changed("OperationMeta.executed (an operation without commands)")
        )


def test_an_earlier_operations_commands_are_seen_as_a_change_failed_or_not() -> None:
    run = planned_run()
    for name in ("healthy", "broken"):
        planned = [seen.changed_before for seen in run.seen[name]]
        assert planned == [False, False], internal_changed("planning: nothing has run yet")
    run_ops(run.state)
    for name in ("healthy", "broken"):
        executed = [seen.changed_before for seen in run.seen[name] if seen.executing]
        # Before the command nothing ran; after it (succeeded or failed) the host may differ.
        assert executed == [False, True], internal_changed(
            "State.ops/Host.op_hash_order/Host.current_op_hash/OperationMeta (the run's changes)"
        )


def test_an_operation_changes_its_host_planned_and_once_run() -> None:
    run = planned_run()
    host = run.host("healthy")
    metas = run.metas["healthy"]
    with ctx_state.use(run.state), ctx_host.use(host):
        planned = {name: changes_host(meta) for name, meta in metas.items()}
    assert planned == {"no-op": False, "before": False, "change": True, "after": False}, (
        internal_changed("OperationMeta.will_change")
    )
    run_ops(run.state)
    ran = {name: changes_host(meta) for name, meta in metas.items()}
    assert ran == {"no-op": False, "before": False, "change": True, "after": False}, (
        internal_changed("OperationMeta.did_change()")
    )


@dataclass
class CliPlan:
    """The entry file planned as pyinfra's CLI plans it, on two converged @fake hosts."""

    operations: dict[str, list[tuple[str, list[str]]]]  # host: (op hash, names) in its order
    run_order: list[str]
    walks: int  # inspect.getmodule calls that walked sys.modules for the entry file's frames


def counted_walks(monkeypatch: pytest.MonkeyPatch, filename: str) -> Callable[[], int]:
    """Count inspect.getmodule's walks of sys.modules (an ismodule call per module) for
    ``filename``'s frames, from now on."""
    ismodule, getmodule = inspect.ismodule, inspect.getmodule
    calls = {"ismodule": 0, "walks": 0}

    def counted_ismodule(candidate: object) -> bool:
        calls["ismodule"] += 1
        return ismodule(candidate)

    def counted_getmodule(candidate: object, _filename: str | None = None) -> Any:
        before = calls["ismodule"]
        module = getmodule(candidate, _filename)
        # One ismodule call for the object itself; one per module of sys.modules in a walk.
        if _filename == filename and calls["ismodule"] - before > 1:
            calls["walks"] += 1
        return module

    monkeypatch.setattr(inspect, "ismodule", counted_ismodule)
    monkeypatch.setattr(inspect, "getmodule", counted_getmodule)
    return lambda: calls["walks"]


def cli_planned(monkeypatch: pytest.MonkeyPatch, register: bool) -> CliPlan:
    """
    ENTRY_FILE exec'd for each host in CLI mode, as pyinfra_cli/util.py's load_deploy_file and
    exec_file do (pyinfra_cli itself is not imported: it would gevent-patch the test session),
    with or without its register_deploy_file.
    """
    # inspect's caches, restored after the test: a walk updates the two together.
    monkeypatch.setattr(inspect, "modulesbyfile", dict(inspect.modulesbyfile))
    monkeypatch.setattr(inspect, "_filesbymodname", dict(vars(inspect)["_filesbymodname"]))

    def left_unknown(filename: str | None) -> None:
        """The entry file's registration skipped: the before of the fix."""

    monkeypatch.setattr(
        pyinfra_internals,
        "register_deploy_file",
        register_deploy_file if register else left_unknown,
    )
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(pyinfra, "is_cli", False)
    data = {**FIXTURE_KEY_DATA, "gpu_verify": False}
    hosts = {name: (converged_ubuntu_2004(), data) for name in ("gpu-01", "gpu-02")}
    state = prepare(hosts, lambda: None)  # the inventory, connected; no operations
    monkeypatch.setattr(pyinfra, "is_cli", True)
    state.set_stage(StateStage.Prepare)
    state.current_deploy_filename = ENTRY_FILE
    code = compile(Path(ENTRY_FILE).read_text(), ENTRY_FILE, "exec")
    walks = counted_walks(monkeypatch, ENTRY_FILE)
    with ctx_state.use(state):
        for host in state.inventory:
            with ctx_host.use(host):
                exec(code, {"__file__": ENTRY_FILE})
    operations = {
        host.name: [
            (op_hash, sorted(state.get_op_meta(op_hash).names)) for op_hash in host.op_hash_order
        ]
        for host in state.inventory
    }
    return CliPlan(operations, state.get_op_order(), walks())


def test_a_registered_deploy_file_keeps_the_operation_order_without_walking_modules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unregistered = cli_planned(monkeypatch, register=False)
    registered = cli_planned(monkeypatch, register=True)
    operations = sum(len(host_operations) for host_operations in unregistered.operations.values())
    # Each operation call reads the stack (get_operation_order_from_stack): without the
    # registration, inspect walks sys.modules for the entry file's frame on each.
    assert unregistered.walks >= operations > 0, (
        f"pyinfra {PYINFRA_VERSION} no longer has inspect walk sys.modules for an exec'd deploy "
        "file's frames: register_deploy_file (gpufleet/facts/pyinfra_internals.py) may go"
    )
    assert registered.walks == 0
    # Order and hashes come from the stack's file names and line numbers: the same.
    assert registered.operations == unregistered.operations
    assert registered.run_order == unregistered.run_order
