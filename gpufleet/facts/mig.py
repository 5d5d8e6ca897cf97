"""
The MIG instances on the host's GPUs: ``nvidia-smi mig -lgi`` (GPU instances) and ``-lci``
(compute instances), in the table formats of the real outputs in tests/fixtures/facts/.
"""

from __future__ import annotations

import re

from pyinfra.api import FactBase

from gpufleet.stack.mig import MigInstancesInfo

# Between the two tables in the fact's output.
COMPUTE_INSTANCES_MARKER = "@@gpufleet:mig-compute-instances"

# |   0  MIG 1g.10gb         19        7          0:1     |
_GPU_INSTANCE_ROW = re.compile(r"\|\s*(\d+)\s+MIG (\S+)\s+(\d+)\s+(\d+)\s+(\d+):(\d+)\s*\|")
# |   0      7       MIG 1g.10gb          0         0          0:1     |
_COMPUTE_INSTANCE_ROW = re.compile(
    r"\|\s*(\d+)\s+(\d+)\s+MIG (\S+)\s+(\d+)\s+(\d+)\s+(\d+):(\d+)\s*\|"
)


def parse_mig_instances(output: list[str]) -> MigInstancesInfo:
    """Rows of both tables; anything else (no MIG-enabled GPU, no nvidia-smi) lists nothing."""
    info: MigInstancesInfo = {"gpu_instances": [], "compute_instances": []}
    compute_table = False
    for line in output:
        if line.strip() == COMPUTE_INSTANCES_MARKER:
            compute_table = True
            continue
        if compute_table:
            row = _COMPUTE_INSTANCE_ROW.fullmatch(line.strip())
            if row:
                info["compute_instances"].append((int(row.group(1)), int(row.group(2))))
            continue
        row = _GPU_INSTANCE_ROW.fullmatch(line.strip())
        if row:
            gpu, profile, profile_id, instance_id, start, size = row.groups()
            info["gpu_instances"].append(
                {
                    "gpu": int(gpu),
                    "profile": profile,
                    "profile_id": int(profile_id),
                    "instance_id": int(instance_id),
                    "placement": f"{start}:{size}",
                }
            )
    return info


class MigInstances(FactBase[MigInstancesInfo]):
    """
    Returns the GPU instances (GPU index, profile, profile id, instance id, placement) and the
    compute instances (GPU index, GPU instance id) of every MIG-enabled GPU; nothing without
    nvidia-smi or without a GPU in MIG mode. ``wanted``: read them (False: a host with no MIG
    layout spends no nvidia-smi run on them).
    """

    @staticmethod
    def default() -> MigInstancesInfo:
        return parse_mig_instances([])

    def command(self, wanted: bool = False) -> str:
        if not wanted:
            return "true"
        return (
            "if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi mig -lgi 2>&1; "
            f"echo {COMPUTE_INSTANCES_MARKER}; nvidia-smi mig -lci 2>&1; fi; true"
        )

    def process(self, output: list[str]) -> MigInstancesInfo:
        return parse_mig_instances(output)
