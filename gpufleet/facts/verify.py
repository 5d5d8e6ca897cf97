"""
The evidence gpufleet.deploys.verify judges a GPU host on, gathered read-only in one round trip: the
host's facts (as in facts.gpu_host), the PCI bus, the loader cache, and two containers run with
``--gpus all`` (``nvidia-smi -L`` and the TensorFlow smoke test, whose script is fed on stdin so
nothing is copied to the host).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, TypedDict, cast

from pyinfra.api import FactBase

from gpufleet.facts.dcgm import DcgmDiag
from gpufleet.facts.gpu_host import SECTION_FACTS, combined_command, fact_value, split_sections
from gpufleet.facts.mig import MigInstances
from gpufleet.facts.nvidia import NvrmMessages
from gpufleet.stack.nccl import NCCL_CONF_PATH

if TYPE_CHECKING:
    from gpufleet.diagnosis import CommandRun
    from gpufleet.facts.apt import DebPackageState
    from gpufleet.facts.cuda import CudaToolkitsInfo
    from gpufleet.facts.docker import DockerInfoData
    from gpufleet.facts.nvidia import NvidiaKernelInfo, NvidiaSmiInfo
    from gpufleet.stack.dcgm import DcgmDiagInfo
    from gpufleet.stack.hardware import PciDevice
    from gpufleet.stack.mig import MigInstancesInfo

# A command run's section starts with what was run and ends with its exit status.
RUN_MARKER = "@@gpufleet:run:"
EXIT_MARKER = "@@gpufleet:exit="
# Before the exit status: how long the run took (a first TensorFlow start on a GPU it has only
# PTX for compiles its kernels, which takes minutes).
ELAPSED_MARKER = "@@gpufleet:elapsed-ms="
HEREDOC_DELIMITER = "GPUFLEET_SMOKE_TEST_EOF"
# The smoke test gpufleet ships; standard library, tensorflow and numpy only.
# Package data, so it is found the same from the checkout and from an installed wheel.
SMOKE_TEST_SCRIPT = resources.files("gpufleet.remote").joinpath("tf_smoke_test.py")


class LoaderCache(FactBase[list[str] | None]):
    """
    Returns the ``ldconfig -p`` lines (the libraries the dynamic loader resolves), or None
    without ldconfig.
    """

    def command(self) -> str:
        # ldconfig lives in sbin, which a non-login shell's PATH may lack.
        return 'PATH="$PATH:/usr/sbin:/sbin"; ldconfig -p 2>/dev/null; true'

    def process(self, output: list[str]) -> list[str] | None:
        return output


def command_run_script(command: str, stdin: str | None = None) -> str:
    """
    Run ``command`` with stderr merged into stdout, between RUN_MARKER (with the command) and
    EXIT_MARKER; ``stdin`` is fed to it from a here-document.
    """
    # A subshell, so a command list or an `exit` in it stays within the run.
    script = (
        f"gpufleet_start=$(date +%s%N); echo {shlex.quote(RUN_MARKER + command)}; "
        f"( {command}\n) 2>&1"
    )
    if stdin is not None:
        if any(line == HEREDOC_DELIMITER for line in stdin.splitlines()):
            raise ValueError(f"stdin holds the line {HEREDOC_DELIMITER}, which would end it early")
        script += f" <<'{HEREDOC_DELIMITER}'\n{stdin}\n{HEREDOC_DELIMITER}\n"
    else:
        script += "; "
    elapsed = "$(( ($(date +%s%N) - gpufleet_start) / 1000000 ))"
    return (
        script + f'gpufleet_status=$?; echo "{ELAPSED_MARKER}{elapsed}"; '
        f'echo "{EXIT_MARKER}$gpufleet_status"'
    )


def parse_command_run(output: list[str]) -> CommandRun | None:
    """A ``command_run_script`` section; None when it did not run (its guard was false)."""
    if not output or not output[0].startswith(RUN_MARKER):
        return None
    lines = output[1:]
    exit_status = -1  # killed before it could report one
    if lines and re.fullmatch(rf"{re.escape(EXIT_MARKER)}-?\d+", lines[-1]):
        exit_status = int(lines.pop().removeprefix(EXIT_MARKER))
    seconds = None
    if lines and re.fullmatch(rf"{re.escape(ELAPSED_MARKER)}\d+", lines[-1]):
        seconds = int(lines.pop().removeprefix(ELAPSED_MARKER)) / 1000
    return {
        "command": output[0].removeprefix(RUN_MARKER),
        "exit_status": exit_status,
        "output": "\n".join(lines),
        "seconds": seconds,
    }


# Verification never pulls: a missing image is its own cause ("No such image"), and gpu_host
# pulls it as a step of its own beforehand.
DOCKER_RUN = ["docker", "run", "--rm", "--pull", "never"]


def container_gpus_command(image: str) -> str:
    """The container check: does a ``--gpus all`` container see the host's GPUs?"""
    return shlex.join([*DOCKER_RUN, "--gpus", "all", image, "nvidia-smi", "-L"])


def smoke_test_command(python: list[str], expected_gpus: int) -> str:
    """The smoke test run by ``python`` reading its script from stdin."""
    return shlex.join([*python, "-", "--expected-gpus", str(expected_gpus)])


def container_smoke_test_command(image: str, expected_gpus: int, nccl_conf: bool = False) -> str:
    # NCCL in the container reads the host's settings (its interface) from the same file.
    mount = ["--volume", f"{NCCL_CONF_PATH}:{NCCL_CONF_PATH}:ro"] if nccl_conf else []
    python = [*DOCKER_RUN, "-i", "--gpus", "all", *mount, image, "python3"]
    return smoke_test_command(python, expected_gpus)


def with_docker(command: str) -> str:
    return f"if command -v docker >/dev/null 2>&1; then {command}; fi"


class VerificationEvidenceInfo(TypedDict):
    os_release: dict[str, str]
    nvidia_smi: NvidiaSmiInfo | None
    nvidia_kernel: NvidiaKernelInfo
    nvrm_messages: list[str]
    pci_devices: list[PciDevice]
    packages: dict[str, DebPackageState]
    cuda: CudaToolkitsInfo
    cudnn_version: str | None
    ldconfig: list[str] | None
    docker_info: DockerInfoData | None
    mig_instances: MigInstancesInfo
    dcgm_diag: DcgmDiagInfo | None
    container_gpu_run: CommandRun | None
    smoke_test_run: CommandRun | None
    host_smoke_test_run: CommandRun | None


# Sections gathered and parsed by a fact; the container runs are parsed by parse_command_run.
EVIDENCE_FACTS: dict[str, FactBase] = {
    "os_release": SECTION_FACTS["os_release"],
    "nvidia_smi": SECTION_FACTS["nvidia_smi"],
    "nvidia_kernel": SECTION_FACTS["nvidia_kernel"],
    "nvrm_messages": NvrmMessages(),
    "pci_devices": SECTION_FACTS["pci_devices"],
    "cuda": SECTION_FACTS["cuda"],
    "cudnn_version": SECTION_FACTS["cudnn_version"],
    "ldconfig": LoaderCache(),
    "docker_info": SECTION_FACTS["docker_info"],
    "mig_instances": MigInstances(),
    "dcgm_diag": DcgmDiag(),
}
# The pinned packages' versions and holds (DebPackageStates, with the packages as arguments).
PACKAGE_STATES = SECTION_FACTS["packages"]
COMMAND_RUNS = ("container_gpu_run", "smoke_test_run", "host_smoke_test_run")


def evidence_sections(
    image: str,
    smoke_test: bool,
    expected_gpus: int,
    host_python: str | None,
    packages: Sequence[str],
    nccl_conf: bool,
    mig: bool,
    dcgm_diag_level: int | None,
) -> str:
    sections = {name: str(fact.command()) for name, fact in EVIDENCE_FACTS.items()}
    sections["mig_instances"] = MigInstances().command(wanted=mig)
    if dcgm_diag_level is None:
        del sections["dcgm_diag"]
    else:
        sections["dcgm_diag"] = DcgmDiag().command(level=dcgm_diag_level)
    sections["packages"] = str(PACKAGE_STATES.command(packages=list(packages)))
    container_gpu_run = command_run_script(container_gpus_command(image))
    if not smoke_test:
        # Without the smoke test the image is not needed (a driver upgrade's verification):
        # the container check runs only where it is already on the host.
        container_gpu_run = (
            f"if docker image inspect {shlex.quote(image)} >/dev/null 2>&1; then "
            f"{container_gpu_run}; fi"
        )
    sections["container_gpu_run"] = with_docker(container_gpu_run)
    script = SMOKE_TEST_SCRIPT.read_text(encoding="utf-8")
    if smoke_test:
        smoke_test_run = command_run_script(
            container_smoke_test_command(image, expected_gpus, nccl_conf), stdin=script
        )
        sections["smoke_test_run"] = with_docker(smoke_test_run)
    if host_python is not None:
        host_run = command_run_script(
            smoke_test_command([host_python], expected_gpus), stdin=script
        )
        sections["host_smoke_test_run"] = (
            f"if [ -x {shlex.quote(host_python)} ]; then {host_run}; fi"
        )
    return combined_command(sections)


def parse_verification_evidence(output: list[str]) -> VerificationEvidenceInfo:
    sections = split_sections(output)
    evidence = {
        name: fact_value(fact, sections.get(name, [])) for name, fact in EVIDENCE_FACTS.items()
    }
    evidence["packages"] = fact_value(PACKAGE_STATES, sections.get("packages", []))
    for name in COMMAND_RUNS:
        evidence[name] = parse_command_run(sections.get(name, []))
    return cast(VerificationEvidenceInfo, evidence)


class VerificationEvidence(FactBase[VerificationEvidenceInfo]):
    """
    Returns, in one round trip, what verification needs: os_release, pci_devices, nvidia_smi,
    nvidia_kernel, cuda, cudnn_version, ldconfig, docker_info, and the runs (command, exit status,
    output) of ``docker run --rm --pull never --gpus all IMAGE nvidia-smi -L`` (without
    ``smoke_test``, only where IMAGE is on the host), the states of
    ``packages`` (versions, holds), with ``smoke_test`` of the
    TensorFlow smoke test in IMAGE expecting ``expected_gpus`` (0: at least one), and with
    ``host_python`` of the smoke test run by that interpreter on the host (when it exists);
    ``nccl_conf``: the container smoke test mounts the host's /etc/nccl.conf; ``mig``: the
    GPUs' MIG instances (MigInstances) are read; ``dcgm_diag_level``: DCGM's diagnostic runs at
    that level (DcgmDiag; None: not run). Reads
    only; the containers are removed when they exit.
    """

    @staticmethod
    def default() -> VerificationEvidenceInfo:
        return parse_verification_evidence([])

    def command(
        self,
        image: str,
        smoke_test: bool = True,
        expected_gpus: int = 0,
        host_python: str | None = None,
        packages: Sequence[str] = (),
        nccl_conf: bool = False,
        mig: bool = False,
        dcgm_diag_level: int | None = None,
    ) -> str:
        return evidence_sections(
            image,
            smoke_test,
            expected_gpus,
            host_python,
            packages,
            nccl_conf,
            mig,
            dcgm_diag_level,
        )

    def process(self, output: list[str]) -> VerificationEvidenceInfo:
        return parse_verification_evidence(output)
