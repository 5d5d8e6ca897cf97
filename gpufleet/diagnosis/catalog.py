"""
The catalog of known failures: the real error messages of nvidia-smi, docker, the NVIDIA
container runtime and TensorFlow, each with what it means and the most likely fix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from gpufleet.diagnosis.evidence import Expectations
from gpufleet.stack.catalog import cuda_package_name


@dataclass(frozen=True)
class KnownFailure:
    """A real error message and what it means; {0}.. are the pattern's groups, {driver},
    {cuda}, {cuda_package}, {cudnn} and {image} the fleet's expectations."""

    pattern: re.Pattern[str]
    problem: str
    fix: str

    def describe(self, groups: Sequence[str], expectations: Expectations) -> tuple[str, str]:
        """(problem, fix) with the placeholders filled in."""
        values = {
            "driver": expectations.driver_version,
            "cuda": expectations.cuda_version,
            "cuda_package": cuda_package_name(expectations.cuda_version),
            "cudnn": expectations.cudnn_version,
            "image": expectations.tensorflow_image,
        }
        return self.problem.format(*groups, **values), self.fix.format(*groups, **values)


RERUN = "re-run gpufleet"
# The fixes several failures share.
INSTALL_DRIVER = "install driver {driver} (" + RERUN + ") and reboot"
INSTALL_CUDA_RUNTIME = (
    "install {cuda_package} (" + RERUN + "), or use {image}, which ships CUDA {cuda}"
)

DRIVER_LIBRARY_MISMATCH = KnownFailure(
    re.compile(r"Failed to initialize NVML: Driver/library version mismatch"),
    "the loaded NVIDIA kernel module and the user-space libraries differ (driver upgraded "
    "without a reboot)",
    "reboot the host (or unload and reload the nvidia modules) to load driver {driver}",
)

# The driver's branch cannot drive a GPU on the bus: the kernel log says so (flatcar/Flatcar#1283,
# 535.104.05), while nvidia-smi only fails to reach the driver or finds no device.
GPU_NOT_SUPPORTED = KnownFailure(
    re.compile(
        r"NVRM: The NVIDIA GPU (\S+) \(PCI ID: (10de:[0-9a-f]{4})\)[\s\S]{0,200}?"
        r"not supported by the[\s\S]{0,80}?NVIDIA ([\d.]+)"
    ),
    "driver {2} does not support the GPU {1} at {0}",
    "pin a driver branch that drives this GPU (gpufleet's plan names them from the PCI bus), "
    "then " + RERUN,
)

# Most specific and most fundamental first: the first match explains a message.
KNOWN_FAILURES = (
    GPU_NOT_SUPPORTED,
    DRIVER_LIBRARY_MISMATCH,
    KnownFailure(
        re.compile(r"couldn't communicate with the NVIDIA driver"),
        "the NVIDIA kernel module is not loaded",
        "modprobe nvidia; if that fails, install linux-headers-$(uname -r), " + RERUN + " and "
        "reboot (the module must be built for the running kernel)",
    ),
    KnownFailure(
        # docker run with the image absent and no pull: "docker: Error response from daemon:
        # No such image: NAME:TAG." (balena-io/balena-cli#2159).
        re.compile(r"No such image: (\S+?)\.?(?:\s|$)"),
        "image not available on the host: {0}",
        "gpu_host pulls tensorflow_image before verifying (tensorflow_image_registry_mirror for "
        "a registry mirror), or loads it from tensorflow_image_archive_url on hosts that cannot "
        "pull",
    ),
    KnownFailure(
        # nvidia-smi's answer when the module loaded but initialised no GPU (nvidia-smi(1)).
        re.compile(r"^No devices were found", re.MULTILINE),
        "the NVIDIA driver initialised no GPU: a GPU on the bus that driver {driver} does not "
        "support, or GPUs that fell off the bus",
        "compare the GPUs on the PCI bus with the driver branch (gpufleet's plan names the "
        "branches that drive them); look for NVRM and Xid lines in dmesg",
    ),
    KnownFailure(
        re.compile(
            r"could not select device driver (?:\"[^\"]*\" )?with capabilities: \[\[gpu\]\]"
        ),
        "docker cannot serve --gpus: no NVIDIA device driver is registered with it",
        "install nvidia-container-toolkit and restart docker (" + RERUN + ")",
    ),
    KnownFailure(
        re.compile(r"unknown or invalid runtime name: nvidia|Unknown runtime specified nvidia"),
        "docker has no 'nvidia' runtime",
        "register it (nvidia-ctk runtime configure --runtime=docker) and restart docker ("
        + RERUN
        + ")",
    ),
    KnownFailure(
        re.compile(r"nvidia-container-cli: requirement error: unsatisfied condition: ([^\n]+)"),
        "the image needs a newer driver ({0})",
        INSTALL_DRIVER,
    ),
    KnownFailure(
        re.compile(r"CUDA driver version is insufficient for CUDA runtime version"),
        "the NVIDIA driver is too old for the CUDA runtime",
        INSTALL_DRIVER,
    ),
    KnownFailure(
        re.compile(r"Could not load dynamic library '(libcuda\.so[.\d]*)'"),
        "the driver library {0} is not visible (container started without --gpus?)",
        "run the container with --gpus all",
    ),
    KnownFailure(
        re.compile(r"Could not load dynamic library '(libcudart\.so[.\d]*)'"),
        "the CUDA runtime {0} is missing",
        INSTALL_CUDA_RUNTIME,
    ),
    KnownFailure(
        re.compile(r"Could not load dynamic library '(libcudnn\.so[.\d]*)'"),
        "cuDNN is missing ({0} not found)",
        "install libcudnn8 {cudnn} for CUDA {cuda} (" + RERUN + "), or use {image}, which ships it",
    ),
    KnownFailure(
        re.compile(r"Could not load dynamic library '([^']+)'"),
        "the CUDA library {0} is missing",
        INSTALL_CUDA_RUNTIME,
    ),
    KnownFailure(
        # TF's own words for a process with no GPU device, and tf_smoke_test.py's summary of them.
        re.compile(
            r"failed call to cuInit: CUDA_ERROR_NO_DEVICE"
            r"|kernel driver does not appear to be running on this host"
            r"|missing --gpus all"
        ),
        "no GPU reached the process (container started without --gpus all?)",
        "run the container with --gpus all (and without NVIDIA_VISIBLE_DEVICES=none)",
    ),
    KnownFailure(
        re.compile(
            r"nvidia-smi\"?: (?:command )?not found|\"nvidia-smi\": executable file not found"
        ),
        "the container has no nvidia-smi: it was started without --gpus (the NVIDIA runtime "
        "mounts nvidia-smi and libcuda only then)",
        "run the container with --gpus all",
    ),
)


def explain(text: str, expectations: Expectations) -> tuple[str, str] | None:
    """(problem, fix) for the first known failure message in text, or None."""
    for failure in KNOWN_FAILURES:
        match = failure.pattern.search(text)
        if match:
            return failure.describe(match.groups(), expectations)
    return None
