"""
What a host is judged on: the fleet's expectations, the evidence seen on the host, and the
helpers that read the evidence's text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NotRequired, Required, TypedDict

if TYPE_CHECKING:  # the facts modules import pyinfra; only their shapes are needed here
    from gpufleet.facts.cuda import CudaToolkitsInfo
    from gpufleet.facts.docker import DockerInfoData
    from gpufleet.facts.nvidia import NvidiaKernelInfo, NvidiaSmiInfo
    from gpufleet.stack.dcgm import DcgmDiagInfo
    from gpufleet.stack.hardware import PciDevice
    from gpufleet.stack.mig import MigInstancesInfo


@dataclass(frozen=True)
class Expectations:
    """What a healthy host of the fleet has."""

    driver_version: str
    cuda_version: str
    cudnn_version: str
    expected_gpu_count: int | None = None  # None: at least one
    default_runtime: str | None = None  # None: docker's default runtime is not checked
    tensorflow_image: str = "tensorflow/tensorflow:2.9.0-gpu"
    # GPU index -> its MIG instances' profiles ([]: MIG disabled); GPUs left out are not checked.
    mig_layouts: Mapping[int, list[str]] = field(default_factory=dict)
    dcgm_diag_level: int | None = None  # None: DCGM's diagnostic is not expected


class CommandRun(TypedDict):
    command: str
    exit_status: int
    output: str  # stdout and stderr together
    seconds: NotRequired[float | None]  # how long it ran (None: not measured)


class HostEvidence(TypedDict, total=False):
    """
    What was seen on the host. A missing key or None means it was not gathered (or the tool is
    absent); the checks that need it are then "unverified" rather than failed.
    """

    host: Required[str]
    pci_devices: list[PciDevice] | None  # NVIDIA's devices on the PCI bus (lspci or sysfs)
    nvidia_smi: NvidiaSmiInfo | None
    nvidia_kernel: NvidiaKernelInfo | None
    nvrm_messages: list[str]  # the kernel log's "NVRM:" lines
    cuda: CudaToolkitsInfo | None
    cudnn_version: str | None
    ldconfig: list[str] | None  # `ldconfig -p` lines
    docker_info: DockerInfoData | None
    mig_instances: MigInstancesInfo | None  # read only where MIG layouts are expected
    dcgm_diag: DcgmDiagInfo | None  # `dcgmi diag`, run only where gpu_dcgm is on
    container_gpu_run: CommandRun | None  # `docker run --rm --gpus all IMAGE nvidia-smi -L`
    smoke_test: dict[str, Any] | None  # tf_smoke_test.py's JSON line, parsed
    smoke_test_output: str | None  # everything the smoke test run printed
    # The same on the host itself (tensorflow_host_test); absent when not asked for.
    host_smoke_test: dict[str, Any] | None
    host_smoke_test_output: str | None


def first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "(no output)"


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))
