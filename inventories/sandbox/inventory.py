"""
The sandbox test host that `python -m testbed.sandbox` boots (see README.md): one host of the
OS release chosen with --os (Ubuntu 20.04 by default) reached over SSH, with NVIDIA's
repositories replaced by the signed stand-in repositories.

The sandbox writes where its host is and how to reach it to GPUFLEET_SANDBOX_STATE; this file
adds nothing to that data and lets no group data add to it either: it has a folder of its own,
away from the fleets' inventories/group_data/ and inventories/<fleet>/group_data/.
"""

import json
import os
from pathlib import Path

STATE = Path(os.environ.get("GPUFLEET_SANDBOX_STATE", "/run/gpufleet-sandbox/sandbox.json"))

if not STATE.exists():
    raise SystemExit(
        f"No sandbox is running ({STATE} is missing): start one with "
        "`.venv/bin/python -m testbed.sandbox` as root."
    )

# pyinfra applies the group data in group_data/ of the current directory and of this file's
# folder to every inventory loaded from there (pyinfra_cli/inventory.py,
# make_inventory_from_files): a fleet's group data belongs in its own folder,
# inventories/<fleet>/group_data/, and any found here would reach the sandbox host.
_group_data_here = sorted(
    str(file)
    for folder in {Path.cwd() / "group_data", Path(__file__).resolve().parent / "group_data"}
    for file in folder.glob("*.py")
)
if _group_data_here:
    raise SystemExit(
        f"Group data would apply to the sandbox host: {', '.join(_group_data_here)}. Keep a "
        "fleet's group data beside its inventory, in inventories/<fleet>/group_data/ "
        '(README.md, "Group data").'
    )

sandbox = json.loads(STATE.read_text())
gpu_hosts = [(sandbox["address"], sandbox["data"])]
