"""
MIG layouts that survive a reboot: the layouts file, the script that applies it and the unit that
runs the script at boot, then the layouts applied now where the GPUs differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources

from pyinfra.api import deploy

from gpufleet.operations import managed_files, mig
from gpufleet.stack.mig import (
    BOOT_LINK,
    LAYOUTS_PATH,
    SCRIPT_PATH,
    SERVICE,
    UNIT,
    UNIT_PATH,
    layouts_file,
)

LAYOUT_SCRIPT = resources.files("gpufleet.remote").joinpath("mig_layouts.sh")


@deploy("MIG layouts")
def mig_layouts(layouts: Mapping[int, Sequence[str]]) -> None:
    """
    + layouts: GPU index -> GPU instance profiles in creation order (empty: MIG disabled)
    """
    managed_files.contents(
        name=f"{LAYOUTS_PATH} and {SERVICE}",
        files={LAYOUTS_PATH: layouts_file(layouts), UNIT_PATH: UNIT},
    )
    managed_files.contents(
        name=f"{SCRIPT_PATH} (applies the layouts)",
        files={SCRIPT_PATH: LAYOUT_SCRIPT.read_text(encoding="utf-8")},
        mode="755",
    )
    managed_files.link(name=f"{SERVICE} runs at boot", path=BOOT_LINK, target=UNIT_PATH)
    mig.layouts_applied(name="MIG layouts applied", layouts=layouts)


@deploy("No MIG layouts")
def no_mig_layouts() -> None:
    """gpufleet stops keeping layouts (the GPUs are left as they are)."""
    managed_files.absent(
        name=f"{SERVICE} and its layouts removed",
        files=[LAYOUTS_PATH, UNIT_PATH, SCRIPT_PATH],
        links=[BOOT_LINK],
    )
