"""
Facts gathered together: one GpuHostState read per host and run, before the first operation,
answers the facts gpufleet's operations check for as long as the run has changed nothing on the
host. pyinfra reads every fact when an operation runs, so without this a converged host would
cost a round trip per check; with it a no-op run costs one.

Operations read their facts with ``current(Fact, **arguments)``. Once an operation of this run
has run commands on the host (installed a package, written a file), the snapshot may be stale
and ``current`` reads live, as pyinfra does (facts/pyinfra_internals.py tells which operations
ran commands: pyinfra has no public way to ask).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from pyinfra.api import FactBase, Host
from pyinfra.context import ctx_host, ctx_state
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from gpufleet.facts.apt import AptSourceFiles, DebPackageStates
from gpufleet.facts.files import FileDigests, SymlinkTargets
from gpufleet.facts.gpu_host import SECTION_FACTS, GpuHostState, GpuHostStateInfo, section_arguments
from gpufleet.facts.pyinfra_internals import changed_before_current_operation
from gpufleet.facts.systemd_units import UnitMainCommands

T = TypeVar("T")

# Facts that map each item of one list argument to that item's state: a reading taken for
# some items holds the answer for any of them.
ITEM_ARGUMENTS: dict[type[FactBase], str] = {
    DebPackageStates: "packages",
    AptSourceFiles: "locations",
    FileDigests: "paths",
    SymlinkTargets: "paths",
    SystemdStatus: "services",
    SystemdEnabled: "services",
    UnitMainCommands: "units",
}
# dpkg-query takes its names as glob patterns, so a reading for `nvidia-driver-[0-9]*` holds
# nvidia-driver-470. (It lists a pattern's packages dpkg knows as not-installed as well.)
PATTERN_ITEM_FACTS: set[type[FactBase]] = {DebPackageStates}


_command_signatures: dict[type[FactBase], inspect.Signature] = {}


def _command_signature(fact: type[FactBase]) -> inspect.Signature:
    """The fact's command signature, read once per run (inspect is slow, facts are read often)."""
    if fact not in _command_signatures:
        _command_signatures[fact] = inspect.signature(fact().command)
    return _command_signatures[fact]


def complete_arguments(fact: type[FactBase], arguments: dict[str, Any]) -> dict[str, Any]:
    """The fact's command arguments with its defaults filled in, as its command sees them."""
    bound = _command_signature(fact).bind(**arguments)
    bound.apply_defaults()
    return dict(bound.arguments)


@dataclass(frozen=True)
class Reading:
    """One fact's value for complete arguments, read in the snapshot's round trip."""

    fact: type[FactBase]
    arguments: dict[str, Any]
    value: Any

    def _item_matches(self, name: str, item: str) -> bool:
        return name == item or (self.fact in PATTERN_ITEM_FACTS and fnmatchcase(name, item))

    def answers(self, fact: type[FactBase], arguments: dict[str, Any]) -> bool:
        if fact is not self.fact:
            return False
        if arguments == self.arguments:
            return True
        item_argument = ITEM_ARGUMENTS.get(fact)
        if item_argument is None:
            return False
        wanted, read = arguments[item_argument], self.arguments[item_argument]
        others_equal = {**arguments, item_argument: None} == {**self.arguments, item_argument: None}
        return (
            others_equal
            and isinstance(wanted, list)
            and all(any(self._item_matches(item, taken) for taken in read) for item in wanted)
        )

    def answer(self, arguments: dict[str, Any]) -> Any:
        """The value for ``arguments`` (which this reading ``answers``): its items' part."""
        item_argument = ITEM_ARGUMENTS.get(self.fact)
        if item_argument is None:
            return self.value
        wanted = arguments[item_argument]
        return {
            name: item_state
            for name, item_state in self.value.items()
            if any(self._item_matches(name, item) for item in wanted)
        }


_snapshots: WeakKeyDictionary[Host, list[Reading]] = WeakKeyDictionary()


def take(**arguments: Any) -> GpuHostStateInfo:
    """
    Read GpuHostState (``arguments`` are its own) on the current host and keep each of its
    sections as a reading for ``current``.
    """
    current_host: Host = ctx_host.get()
    host_state = current_host.get_fact(GpuHostState, **arguments)
    _snapshots[current_host] = [
        Reading(
            type(SECTION_FACTS[name]),
            complete_arguments(type(SECTION_FACTS[name]), fact_arguments),
            host_state[name],  # type: ignore[literal-required]
        )
        for name, fact_arguments in section_arguments(
            **complete_arguments(GpuHostState, arguments)
        ).items()
    ]
    return host_state


def current(fact: type[FactBase[T]], **arguments: Any) -> T:
    """
    The fact's value on the current host: from the snapshot while this run has changed nothing
    there, else read live with ``host.get_fact``.
    """
    complete = complete_arguments(fact, arguments)
    current_host: Host = ctx_host.get()
    if not changed_before_current_operation(ctx_state.get(), current_host):
        for reading in _snapshots.get(current_host, []):
            if reading.answers(fact, complete):
                return reading.answer(complete)
    return current_host.get_fact(fact, **arguments)
