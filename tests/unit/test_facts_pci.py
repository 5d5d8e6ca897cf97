"""The NVIDIA devices on the PCI bus and the Secure Boot state, from real outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.facts.pci import NvidiaPciDevices, parse_pci_devices, sysfs_devices_command
from gpufleet.facts.secure_boot import SecureBoot, SecureBootState, parse_secure_boot
from tests.unit.test_facts_support import FIXTURES, fixture_lines, run_lines


def test_lspci_n_without_domains_of_a_t4_server() -> None:
    devices = parse_pci_devices(fixture_lines("lspci-n-grep-10de-t4-server.txt"))
    assert [device["address"] for device in devices] == [
        "0000:18:00.0",
        "0000:3b:00.0",
        "0000:5e:00.0",
        "0000:5f:00.0",
        "0000:86:00.0",
        "0000:87:00.0",
        "0000:af:00.0",
    ]
    assert {(device["class_code"], device["device_id"]) for device in devices} == {("0302", "1eb8")}


def test_lspci_nn_of_an_hgx_a100_in_azure_keeps_its_domains_and_finds_the_nvswitches() -> None:
    devices = parse_pci_devices(fixture_lines("lspci-nn-azure-hgx-a100.txt"))
    gpus = [device for device in devices if device["class_code"] == "0302"]
    switches = [device for device in devices if device["class_code"] == "0680"]
    assert len(gpus) == 8 and {gpu["device_id"] for gpu in gpus} == {"20b2"}
    assert gpus[0]["address"] == "0001:00:00.0"
    assert len(switches) == 6 and {switch["device_id"] for switch in switches} == {"1af1"}
    # The Mellanox and Microsoft devices of the same listing are not NVIDIA's.
    assert len(devices) == 14


def test_sysfs_of_an_hgx_h100_reads_like_lspci() -> None:
    tree = FIXTURES / "sysfs-pci-hgx-h100"
    status, lines = run_lines(sysfs_devices_command(str(tree)))
    assert status == 0
    assert parse_pci_devices(lines) == [
        {"address": "0000:b8:00.0", "class_code": "0302", "device_id": "2330"},
        {"address": "0000:d9:00.0", "class_code": "0302", "device_id": "2330"},
    ]


def test_the_fact_reads_sysfs_where_lspci_is_missing() -> None:
    # An empty PATH for the lookup: the fact reads this machine's sysfs, which every kernel has.
    status, lines = run_lines(f"command() {{ return 1; }}; {NvidiaPciDevices().command()}")
    assert status == 0
    nvidia = [
        device.name
        for device in sorted(Path("/sys/bus/pci/devices").iterdir())
        if (device / "vendor").read_text().strip() == "0x10de"
    ]
    assert [device["address"] for device in parse_pci_devices(lines)] == nvidia


@pytest.mark.parametrize(
    ("fixture", "state"),
    [
        ("mokutil-sb-state-enabled.txt", SecureBootState.ENABLED),
        ("mokutil-sb-state-disabled.txt", SecureBootState.DISABLED),
        ("mokutil-sb-state-no-efi.txt", SecureBootState.UNSUPPORTED),
    ],
)
def test_mokutil_sb_state(fixture: str, state: SecureBootState) -> None:
    assert parse_secure_boot(fixture_lines(fixture)) is state


def test_secure_boot_from_the_efi_variable_and_this_machine() -> None:
    assert parse_secure_boot(["efivar   1"]) is SecureBootState.ENABLED
    assert parse_secure_boot(["efivar   0"]) is SecureBootState.DISABLED
    assert parse_secure_boot([]) is SecureBootState.UNKNOWN
    status, lines = run_lines(SecureBoot().command())
    assert status == 0
    if Path("/sys/firmware/efi").exists():
        assert parse_secure_boot(lines) in (SecureBootState.ENABLED, SecureBootState.DISABLED)
    else:
        assert parse_secure_boot(lines) is SecureBootState.UNSUPPORTED
