from __future__ import annotations

import pytest

from gpufleet.facts.apt import (
    DebPackageStates,
    HeldPackages,
    parse_dpkg_query_states,
    parse_showhold,
)
from tests.unit.test_facts_support import fixture_lines, run_fact, run_lines


def test_held_installed_and_unknown_names() -> None:
    states = parse_dpkg_query_states(fixture_lines("dpkg-query-held-installed-missing.txt"))
    assert states == {
        "bash": {"version": "5.2.15-2+b8", "held": True, "installed": True},
        "coreutils": {"version": "9.1-1", "held": False, "installed": True},
    }


def test_removed_package_with_config_files() -> None:
    states = parse_dpkg_query_states(fixture_lines("dpkg-query-config-files.txt"))
    assert states == {
        "gpufleet-demo-conffile": {"version": "1.0-1", "held": False, "installed": False},
    }


def test_missing_names_only_reach_stderr() -> None:
    stderr = fixture_lines("dpkg-query-held-installed-missing.stderr.txt")
    assert stderr == ["dpkg-query: no packages found matching gpufleet-no-such-package"]


@pytest.mark.parametrize(
    ("fixture", "held"),
    [("apt-mark-showhold-bash.txt", ["bash"]), ("apt-mark-showhold-none.txt", [])],
)
def test_showhold(fixture: str, held: list[str]) -> None:
    assert parse_showhold(fixture_lines(fixture)) == held


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_package_states_command_runs_here(shell: str) -> None:
    names = ["bash", "gpufleet-no-such-package", "it's; not a name"]
    _, expected = run_lines("dpkg-query -W -f '${Package}\\t${Version}\\t${Status}\\n' bash")
    states = run_fact(DebPackageStates(), shell, packages=names)
    assert states == parse_dpkg_query_states(expected)
    assert list(states) == (["bash"] if expected else [])


def test_no_packages_asks_nothing() -> None:
    assert run_fact(DebPackageStates(), packages=[]) == {}


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_held_packages_command_runs_here(shell: str) -> None:
    _, expected = run_lines("apt-mark showhold")
    assert run_fact(HeldPackages(), shell) == sorted(expected)
