"""
The inventories in inventories/ as pyinfra's CLI loads them, the group data layout README.md
documents, and the fact arguments of its fact commands. pyinfra runs in a subprocess: importing
pyinfra_cli would gevent-monkey-patch the whole test session.
"""

from __future__ import annotations

import json
import logging
import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import FactBase
from pyinfra.connectors.sshuserclient.client import get_host_keys

from gpufleet.facts.apt import AptOffers, AptSourceFiles, DebPackageStates
from gpufleet.facts.files import FileDigests, SymlinkTargets
from gpufleet.facts.gpu_host import GpuHostState
from gpufleet.facts.systemd_units import UnitMainCommands
from gpufleet.settings import DATA_DEFAULTS, read_settings

INVENTORIES = Path(__file__).resolve().parents[2] / "inventories"
PYINFRA = Path(sys.executable).parent / "pyinfra"


def pyinfra(cwd: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PYINFRA), "-y", *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def loaded_hosts(inventory: Path, cwd: Path) -> dict[str, dict[str, Any]]:
    """Each host's groups and data as `pyinfra INVENTORY` run from ``cwd`` builds them."""
    result = pyinfra(cwd, "--json", str(inventory), "debug-inventory")
    assert result.returncode == 0, result.stderr
    return {host.pop("name"): host for host in json.loads(result.stdout)}


def host_data(inventory: Path, cwd: Path) -> dict[str, dict[str, Any]]:
    return {name: host["data"] for name, host in loaded_hosts(inventory, cwd).items()}


def test_example_sets_only_what_it_says() -> None:
    data = runpy.run_path(str(INVENTORIES / "example.py"))["GPUFLEET_DATA"]
    assert set(data) <= set(DATA_DEFAULTS)
    # The docstring's "set here"; every other key is marked "default".
    assert {key for key, value in data.items() if value != DATA_DEFAULTS[key]} == {
        "docker_daemon_config"
    }
    read_settings(data)


def test_example_loads_as_an_inventory(tmp_path: Path) -> None:
    hosts = loaded_hosts(INVENTORIES / "example.py", cwd=tmp_path)
    assert sorted(hosts) == ["gpu-01.example.com", "gpu-02.example.com"]
    for host in hosts.values():
        assert set(host["groups"]) == {"training", "example"}
        assert host["data"]["ssh_user"] == "ubuntu"
        assert read_settings(host["data"]).docker_daemon_config == {"default-shm-size": "1G"}


def test_group_data_beside_the_inventory(tmp_path: Path) -> None:
    data = host_data(INVENTORIES / "example-fleet" / "inventory.py", cwd=tmp_path)
    everyone = {
        "ssh_user": "ubuntu",
        "_sudo": True,
        "docker_daemon_config": {"default-shm-size": "1G"},
    }
    training = {
        "nvidia_driver_branch": "580",
        "nvidia_driver_version": "580.159.04",
        "gpu_reboot_allowed": True,
    }
    assert data == {
        "gpu-01.example.com": {**everyone, **training, "gpu_expected_count": 8},
        "gpu-02.example.com": {**everyone, **training},
        "gpu-10.example.com": everyone,
    }
    for values in data.values():
        read_settings(values)


def test_group_data_of_the_current_directory_applies_too(tmp_path: Path) -> None:
    # Why the sandbox refuses a group_data/ where it runs: pyinfra reads it for any inventory.
    (tmp_path / "group_data").mkdir()
    (tmp_path / "group_data" / "all.py").write_text("gpu_expected_count = 4\n")
    data = host_data(INVENTORIES / "example.py", cwd=tmp_path)
    assert [values["gpu_expected_count"] for values in data.values()] == [4, 4]


@pytest.fixture
def sandbox_inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The sandbox's inventory, with a state as testbed/sandbox.py writes it."""
    folder = tmp_path / "inventories" / "sandbox"
    folder.mkdir(parents=True)
    shutil.copy(INVENTORIES / "sandbox" / "inventory.py", folder)
    data = {"ssh_user": "root", "ssh_known_hosts_file": str(tmp_path / "known_hosts")}
    state = tmp_path / "sandbox.json"
    state.write_text(json.dumps({"address": "10.0.0.2", "data": data}))
    monkeypatch.setenv("GPUFLEET_SANDBOX_STATE", str(state))
    return folder / "inventory.py"


def test_sandbox_host_data_is_the_sandbox_state(sandbox_inventory: Path, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    data = host_data(sandbox_inventory, cwd=tmp_path)
    assert data == {"10.0.0.2": {"ssh_user": "root", "ssh_known_hosts_file": str(known_hosts)}}


def test_sandbox_is_out_of_reach_of_the_fleets_group_data(
    sandbox_inventory: Path, tmp_path: Path
) -> None:
    (tmp_path / "inventories" / "group_data").mkdir()
    (tmp_path / "inventories" / "group_data" / "all.py").write_text("gpu_reboot_allowed = True\n")
    data = host_data(sandbox_inventory, cwd=tmp_path)
    assert "gpu_reboot_allowed" not in data["10.0.0.2"]


@pytest.mark.parametrize("where", ["beside the inventory", "current directory"])
def test_sandbox_refuses_group_data_that_would_reach_it(
    sandbox_inventory: Path, tmp_path: Path, where: str
) -> None:
    folder = sandbox_inventory.parent if where == "beside the inventory" else tmp_path
    (folder / "group_data").mkdir()
    (folder / "group_data" / "all.py").write_text("gpu_reboot_allowed = True\n")
    result = pyinfra(tmp_path, str(sandbox_inventory), "debug-inventory")
    assert result.returncode == 1
    assert f"Group data would apply to the sandbox host: {folder}/group_data/all.py" in (
        result.stderr
    )


def test_missing_known_hosts_file_is_what_pyinfra_warns_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.touch()
    with caplog.at_level(logging.WARNING, logger="pyinfra"):
        get_host_keys((str(tmp_path / "missing_known_hosts"),))
        get_host_keys((str(empty),))
    assert [record.getMessage().split(":")[0] for record in caplog.records] == [
        f"Failed to load host keys from {tmp_path / 'missing_known_hosts'}"
    ]


def test_fact_cli_takes_a_json_list_and_refuses_a_string(tmp_path: Path) -> None:
    # README.md's syntax: only JSON becomes a list; anything else stays a string.
    fact = "gpufleet.facts.apt.DebPackageStates"
    listed = pyinfra(tmp_path, "--json", "@local", "fact", fact, 'packages=["dpkg"]')
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)[f"{fact} (packages=['dpkg'])"]["@local"]["dpkg"]["installed"]
    string = pyinfra(tmp_path, "--json", "@local", "fact", fact, "packages=dpkg")
    assert string.returncode == 1
    assert """packages must be a list, not the string 'dpkg'""" in string.stderr
    assert """'packages=["dpkg"]'""" in string.stderr


@pytest.mark.parametrize(
    ("fact", "name"),
    [
        (DebPackageStates(), "packages"),
        (AptOffers(), "packages"),
        (AptSourceFiles(), "locations"),
        (FileDigests(), "paths"),
        (SymlinkTargets(), "paths"),
        (UnitMainCommands(), "units"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, FactBase) else value,
)
def test_fact_refuses_a_string_for_a_list(fact: FactBase, name: str) -> None:
    # Iterated, "nvidia-smi" would be the names "n", "v", "i"..., and the answer a silent {}.
    with pytest.raises(TypeError, match=rf"""{name} must be a list.*'{name}=\["nvidia-smi"\]'"""):
        fact.command(**{name: "nvidia-smi"})
    assert fact.command(**{name: ["nvidia-smi"]})
    assert fact.command(**{name: ("nvidia-smi",)})


@pytest.mark.parametrize(
    "name", ["packages", "repository_locations", "offered_packages", "files", "symlinks", "units"]
)
def test_gpu_host_state_refuses_a_string_for_a_list(name: str) -> None:
    arguments: dict[str, Any] = {"packages": ["bash"]}
    with pytest.raises(TypeError, match=rf"GpuHostState: {name} must be a list"):
        GpuHostState().command(**{**arguments, name: "nvidia-smi"})
    assert GpuHostState().command(**{**arguments, name: ["nvidia-smi"]})
