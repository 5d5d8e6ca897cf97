"""
The sandbox test host that `python -m testbed.sandbox` boots (see README.md): one host of the
OS release chosen with --os (Ubuntu 22.04 by default) reached over SSH, with NVIDIA's
repositories replaced by the signed stand-in repositories.

The sandbox writes where its host is and how to reach it to GPUFLEET_SANDBOX_STATE.
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

sandbox = json.loads(STATE.read_text())
gpu_hosts = [(sandbox["address"], sandbox["data"])]
