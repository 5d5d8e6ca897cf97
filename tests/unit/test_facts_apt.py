from __future__ import annotations

import subprocess

import pytest

from gpufleet.facts.apt import (
    AptOffers,
    DebPackageStates,
    HeldPackages,
    parse_dpkg_query_states,
    parse_madison,
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


DEBIAN12_CUDA = "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64"


def test_madison_of_nvidias_flat_repository() -> None:
    offers = parse_madison(fixture_lines("apt-cache-madison-nvidia-driver-debian12.txt"))
    assert offers == {
        "nvidia-driver": [
            {"version": version, "source": DEBIAN12_CUDA}
            for version in (
                "560.35.03-1",
                "560.28.03-1",
                "555.42.06-1",
                "555.42.02-1",
                "550.90.12-1",
                "550.90.07-1",
            )
        ]
    }


def test_madison_names_padded_to_the_longest() -> None:
    # Real apt-cache on this machine: it right-aligns "bash" to the width of "coreutils".
    output = subprocess.run(
        ["apt-cache", "madison", "bash", "coreutils"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert output[0].startswith(" ") and output[0].lstrip().startswith("bash | ")
    offers = parse_madison(output)
    assert set(offers) == {"bash", "coreutils"}
    for offer in offers["bash"] + offers["coreutils"]:
        assert offer["version"][0].isdigit() and "://" in offer["source"]


def test_madison_without_lists_or_names_is_no_offer() -> None:
    assert parse_madison([]) == {}
    assert AptOffers().command([]) == "true"
    assert AptOffers().command(["nvidia-driver", "libcuda1"]) == (
        "apt-cache madison -- nvidia-driver libcuda1 2>/dev/null; true"
    )


def test_madison_this_machine() -> None:
    # Whatever lists this machine has: the fact's command succeeds, unknown names are left out.
    offers = run_fact(AptOffers(), packages=["bash", "gpufleet-no-such-package"])
    assert isinstance(offers, dict) and set(offers) <= {"bash"}
