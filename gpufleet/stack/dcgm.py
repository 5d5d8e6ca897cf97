"""
NVIDIA's Data Center GPU Manager (DCGM): which of its packages gpufleet installs for a driver
branch, its service, the `dcgmi diag` run levels, and the model of a diagnostic's result per GPU.

Pure knowledge (no pyinfra, no I/O). Sources: SOURCES.md, "MIG layouts and DCGM", sections 6
(packages, service, output formats) and 7 (gpufleet's pins).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, TypedDict

from gpufleet.stack.gpus import Architecture
from gpufleet.stack.versions import any_revision

# nvidia-dcgm.service runs `nv-hostengine -n --service-account nvidia-dcgm` (Alias dcgm.service),
# which listens on 127.0.0.1, port 5555, unless told otherwise.
DCGM_SERVICE = "nvidia-dcgm.service"
HOSTENGINE_ADDRESS = "127.0.0.1"

# DCGM 3.x is one package; DCGM 4.x splits it into the core (nv-hostengine, dcgmi, the unit)
# and one package of diagnostic plugins per CUDA major of the driver's user-mode driver. The
# closed-source -proprietary packages (profiling metrics) are Recommends gpufleet leaves out.
DCGM3_PACKAGE = "datacenter-gpu-manager"
DCGM4_PREFIX = "datacenter-gpu-manager-4-"
DCGM4_CORE_PACKAGE = f"{DCGM4_PREFIX}core"
DCGM4_CUDA_PACKAGE = DCGM4_PREFIX + "cuda{major}"
# Every package name of both majors, as dpkg-query patterns: what a host read asks about.
DCGM_PACKAGE_PATTERNS = (DCGM3_PACKAGE, f"{DCGM4_PREFIX}*")

# CUDA 13 dropped the GPUs before Turing: on R580 (CUDA 13.0) DCGM runs their diagnostics with
# its CUDA 12 plugins, and its PCIe test still fails without the CUDA 13 ones (NVIDIA/DCGM#254).
PRE_CUDA13_ARCHITECTURES = frozenset(
    {Architecture.MAXWELL, Architecture.PASCAL, Architecture.VOLTA}
)
CUDA13_MAJOR = 13


@dataclass(frozen=True)
class DcgmPin:
    """The DCGM release gpufleet installs beside one driver branch."""

    version: str  # what dcgmi reports, "4.5.3"
    # DCGM 4.x: the CUDA major of the branch's user-mode driver, which names its plugins package.
    cuda_major: int | None = None

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def apt_pattern(self) -> str:
        """Epoch 1 throughout; 3.x has no Debian revision, 4.x has one (NVIDIA rebuilds, -2)."""
        if self.major < 4:
            return f"1:{self.version}"
        return f"1:{any_revision(self.version)}"


# DCGM validates each release against the driver branches then active: R470 (CUDA 11.4, end of
# life July 2024) was one for DCGM 3.3 (2023-10) and no longer for DCGM 4.0 (2025-01), so it gets
# 3.3's last patch release; R535 (CUDA 12.2) and R580 (CUDA 13.0) share one 4.x release.
DCGM_PINS: dict[str, DcgmPin] = {
    "470": DcgmPin("3.3.9"),
    "535": DcgmPin("4.5.3", cuda_major=12),
    "580": DcgmPin("4.5.3", cuda_major=CUDA13_MAJOR),
}


@dataclass(frozen=True)
class DiagLevel:
    """One `dcgmi diag -r N` suite: what it runs (DCGM 4's test names) and for how long."""

    level: int
    duration: str
    tests: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.level} ({', '.join(self.tests)}; {self.duration})"


_SHORT = ("software",)
_MEDIUM = (*_SHORT, "pcie", "memory")
_LONG = (*_MEDIUM, "diagnostic", "targeted_stress", "targeted_power", "memory_bandwidth")
# Level 4 (memtest, pulse test: hours) is not offered: it is a post-mortem, not a verification.
DIAG_LEVELS: dict[int, DiagLevel] = {
    1: DiagLevel(1, "seconds", _SHORT),
    2: DiagLevel(2, "about 2 minutes", _MEDIUM),
    3: DiagLevel(3, "about 15 minutes", _LONG),
}
DEFAULT_DIAG_LEVEL = 1


def dcgm_pin(driver_branch: str) -> DcgmPin:
    """The branch's DCGM release; ValueError for a branch without one (dcgm_problems says so
    while planning)."""
    if driver_branch not in DCGM_PINS:
        raise ValueError(f"gpufleet pins no DCGM release for driver branch {driver_branch}")
    return DCGM_PINS[driver_branch]


def dcgm_packages(
    driver_branch: str, architectures: Iterable[Architecture]
) -> dict[str, str | None]:
    """
    The packages of the branch's DCGM, each pinned to the release (all of them at one version:
    the plugins depend on the core's exact version). ``architectures``: those of the host's GPUs
    gpufleet knows, which decide R580's plugins.
    """
    pin = dcgm_pin(driver_branch)
    if pin.cuda_major is None:
        return {DCGM3_PACKAGE: pin.apt_pattern}
    majors = {pin.cuda_major}
    if pin.cuda_major == CUDA13_MAJOR and PRE_CUDA13_ARCHITECTURES & set(architectures):
        majors.add(CUDA13_MAJOR - 1)
    names = [DCGM4_CORE_PACKAGE, *(DCGM4_CUDA_PACKAGE.format(major=major) for major in majors)]
    return {name: pin.apt_pattern for name in sorted(names)}


def replaced_dcgm_packages(installed: Iterable[str], wanted: Mapping[str, object]) -> list[str]:
    """
    The installed DCGM packages the pin does not keep: the other major's (4.x's core conflicts
    with 3.x's package) and another CUDA major's plugins, which depend on the core's exact
    version and so would hold it back at the next release.
    """
    return sorted(
        name
        for name in installed
        if (name == DCGM3_PACKAGE or name.startswith(DCGM4_PREFIX)) and name not in wanted
    )


def dcgm_problems(driver_branch: str, diag_level: int) -> list[str]:
    """Why ``gpu_dcgm = True`` cannot be served on a host whose driver is ``driver_branch``."""
    problems = []
    if driver_branch not in DCGM_PINS:
        branches = ", ".join(f"R{branch}" for branch in DCGM_PINS)
        problems.append(
            f"gpu_dcgm = True: gpufleet pins DCGM for driver branches {branches}, and this host's "
            f"driver is R{driver_branch}; set nvidia_driver_branch to one of "
            f"{', '.join(repr(branch) for branch in DCGM_PINS)}, or gpu_dcgm to false"
        )
    if diag_level not in DIAG_LEVELS:
        levels = "; ".join(level.describe() for level in DIAG_LEVELS.values())
        problems.append(
            f"gpu_dcgm_diag_level = {diag_level!r} is not a level gpufleet runs; use {levels}"
        )
    return problems


# --- a diagnostic's result -------------------------------------------------------------------

DiagStatus = Literal["pass", "fail", "warn", "skip"]
# Worst first: a test's overall status is its worst one.
STATUS_ORDER: tuple[DiagStatus, ...] = ("fail", "warn", "pass", "skip")


class DiagTestResult(TypedDict):
    status: DiagStatus
    # Why it failed or warned (4.x: "Persistence Mode: Persistence mode for GPU 0 is disabled...").
    warnings: list[str]
    info: list[str]
    # What the test measured, read from its info: name -> value (facts/dcgm.py's FIGURES).
    figures: dict[str, float]


class GpuDiagResult(TypedDict):
    gpu: int  # DCGM's GPU id, nvidia-smi's index
    device_id: str | None  # PCI device id, "20b2"
    tests: dict[str, DiagTestResult]  # DCGM 4's test name -> result


class DcgmDiagInfo(TypedDict):
    level: int | None
    dcgm_version: str | None
    driver_version: str | None
    # False: dcgmi could not reach nv-hostengine and ran the diagnostic in an engine of its own.
    hostengine_reachable: bool
    gpus: list[GpuDiagResult]
    # Each test's overall result, with what is not tied to one GPU (the 4.x test_summary).
    summary: dict[str, DiagTestResult]
    # What kept the diagnostic from running, or from being read.
    errors: list[str]
    exit_status: int | None


def worst_status(statuses: Iterable[DiagStatus]) -> DiagStatus:
    """The overall status of several results; "skip" when there are none."""
    present = set(statuses)
    return next((status for status in STATUS_ORDER if status in present), "skip")


def diag_problems(info: DcgmDiagInfo | None, expected_gpus: int | None = None) -> list[str]:
    """
    What the verification reports of a diagnostic: dcgmi missing, nv-hostengine not running,
    a run that did not complete, and every failed or warning test, per GPU. ``expected_gpus``:
    how many GPUs the diagnostic must have covered (None: at least one).
    """
    if info is None:
        return ["dcgmi is not installed (gpu_dcgm): DCGM's packages are missing"]
    problems = [f"dcgmi diag: {error}" for error in info["errors"]]
    if not info["hostengine_reachable"]:
        problems.append(
            f"nv-hostengine is not running ({DCGM_SERVICE}): dcgmi ran the diagnostic in an "
            f"engine of its own; start it with `systemctl enable --now {DCGM_SERVICE}`"
        )
    covered = len(info["gpus"])
    if not info["errors"] and (covered == 0 or (expected_gpus and covered != expected_gpus)):
        wanted = expected_gpus or "at least 1"
        problems.append(f"dcgmi diag covered {covered} GPU(s), {wanted} expected")
    reported: set[str] = set()
    for gpu in info["gpus"]:
        for name, result in gpu["tests"].items():
            if result["status"] in ("fail", "warn"):
                reported.add(name)
                problems.append(f"GPU {gpu['gpu']} {name}: {_outcome(result)}")
    # What failed without a GPU to blame (a 4.x test_summary's own warnings).
    for name, result in info["summary"].items():
        if result["status"] in ("fail", "warn") and name not in reported:
            problems.append(f"{name}: {_outcome(result)}")
    return problems


def _outcome(result: DiagTestResult) -> str:
    return f"{result['status']} ({'; '.join(result['warnings']) or 'no reason given'})"
