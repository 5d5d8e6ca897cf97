"""
MIG layouts applied now: the host's layout script (the boot unit's) runs when a GPU's MIG mode
or instances differ from the wanted layout, compared with what the GPUs report, so a run
interrupted half way is finished by the next.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyinfra import host
from pyinfra.api import operation

from gpufleet.facts import snapshot
from gpufleet.facts.mig import MigInstances
from gpufleet.facts.nvidia import NvidiaSmi
from gpufleet.stack.mig import SCRIPT_PATH, unmet_on_gpus


@operation()
def layouts_applied(layouts: Mapping[int, Sequence[str]]):
    """
    Bring each listed GPU to its layout (an empty one: MIG disabled).

    + layouts: GPU index -> GPU instance profiles (the deploy has checked they fit)
    """
    smi = snapshot.current(NvidiaSmi)
    unmet = unmet_on_gpus(
        layouts, smi["gpus"] if smi else [], snapshot.current(MigInstances, wanted=True)
    )
    if not unmet:
        host.noop(f"MIG layouts of GPU {', '.join(map(str, sorted(layouts)))} in place")
        return
    for index, difference in unmet.items():
        host.log_styled(f"GPU {index}: {difference}", fg="cyan")
    yield SCRIPT_PATH
