"""
NCCL's system-wide settings: /etc/nccl.conf, which NCCL reads at its start (containers see it
through a read-only mount of the file, as gpufleet's smoke test runs them).
"""

from __future__ import annotations

from pyinfra.api import deploy

from gpufleet.operations import managed_files
from gpufleet.stack.nccl import NCCL_CONF_PATH, NcclSettings, render_nccl_conf


@deploy("NCCL settings")
def nccl_conf(settings: NcclSettings) -> None:
    managed_files.contents(
        name=f"{NCCL_CONF_PATH} (NCCL's settings)",
        files={NCCL_CONF_PATH: render_nccl_conf(settings)},
    )
