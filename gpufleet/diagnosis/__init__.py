"""
Layer-by-layer verdict for one GPU host, from evidence already gathered (facts, command outputs,
the smoke test's JSON). Pure functions: nothing here touches a host or imports pyinfra.

The layers build on each other, bottom first: hardware, driver, cuda, container, framework. The
first layer with a failed check is the broken one and the layers above it are not reached, so the
verdict names the lowest thing to fix.

- ``evidence``: what is judged (HostEvidence) and against what (Expectations)
- ``catalog``: the known failure messages, each with its cause and fix
- ``hardware``, ``driver``, ``cuda``, ``container``, ``framework``: each layer's checks
- ``checks``: one check's result, as every layer reports it
- ``verdict``: the layers in order, and the host's verdict
"""

from gpufleet.diagnosis.evidence import CommandRun, Expectations, HostEvidence, version_tuple
from gpufleet.diagnosis.framework import HOST_TENSORFLOW_VERSION, parse_smoke_test_output
from gpufleet.diagnosis.verdict import LAYERS, HostState, HostVerdict, diagnose, gpu_models

__all__ = [
    "HOST_TENSORFLOW_VERSION",
    "LAYERS",
    "CommandRun",
    "Expectations",
    "HostEvidence",
    "HostState",
    "HostVerdict",
    "diagnose",
    "gpu_models",
    "parse_smoke_test_output",
    "version_tuple",
]
