"""
Everything gpufleet checks on a GPU host, gathered in one shell command (one round trip) by
running the individual facts' commands as sections of a single script.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from typing import Any, TypedDict, cast

from pyinfra.api import FactBase
from pyinfra.facts.server import KernelVersion
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from gpufleet.facts.accounts import DockerGroup, DockerGroupInfo
from gpufleet.facts.apt import (
    AptOffer,
    AptOffers,
    AptSourceFiles,
    DebPackageState,
    DebPackageStates,
    HeldPackages,
)
from gpufleet.facts.arguments import require_lists
from gpufleet.facts.cuda import CudaToolkits, CudaToolkitsInfo, ToolkitFiles, ToolkitFilesInfo
from gpufleet.facts.cudnn import CudnnVersion
from gpufleet.facts.docker import (
    DockerDaemonConfig,
    DockerDaemonConfigInfo,
    DockerImageId,
    DockerInfo,
    DockerInfoData,
)
from gpufleet.facts.files import FileDigests, FolderFiles, SymlinkTargets
from gpufleet.facts.gpu_users import GpuUsers, GpuUsersInfo
from gpufleet.facts.mig import MigInstances
from gpufleet.facts.network import NetworkInterfaces
from gpufleet.facts.nvidia import NvidiaKernel, NvidiaKernelInfo, NvidiaSmi, NvidiaSmiInfo
from gpufleet.facts.pci import NvidiaPciDevices
from gpufleet.facts.secure_boot import SecureBoot, SecureBootState
from gpufleet.facts.systemd_units import UnitMainCommands
from gpufleet.stack.hardware import PciDevice
from gpufleet.stack.mig import MigInstancesInfo

SECTION_MARKER = "@@gpufleet:section:"

# A marker may follow output that lacked a final newline, so it is matched anywhere, taking the
# newline before it (if any) as part of the marker.
_SECTION_SPLIT = re.compile(rf"\n?{re.escape(SECTION_MARKER)}([\w.-]+)\n?")


def combined_command(facts: dict[str, str]) -> str:
    """
    Join fact commands into one script that prints each one's output after its section marker.
    Each runs in its own subshell with stdin closed and leftover stderr discarded, and the script
    always succeeds, so one failing part cannot stop or fail the others.
    """
    sections = [
        # The newline closes a command that ends in a comment or a trailing ";".
        f"echo {shlex.quote(SECTION_MARKER + name)}; ( {command}\n) </dev/null 2>/dev/null"
        for name, command in facts.items()
    ]
    return "; ".join([*sections, "true"])


def split_sections(output: list[str]) -> dict[str, list[str]]:
    """Split the output of ``combined_command`` into each section's output lines."""
    parts = _SECTION_SPLIT.split("\n".join(output))
    # parts = [text before the first marker, name, text, name, text, ...]
    return {
        name: text.split("\n") if text else []
        for name, text in zip(parts[1::2], parts[2::2], strict=True)
    }


def fact_value(fact: FactBase, output: list[str]) -> Any:
    """What pyinfra returns for ``fact`` given its output lines: no output gives the default."""
    return fact.process(output) if output else fact.default()


def parse_os_release(output: list[str]) -> dict[str, str]:
    """``/etc/os-release`` as ``{"ID": "debian", "VERSION_ID": "12", ...}`` (shell unquoted)."""
    fields: dict[str, str] = {}
    for line in output:
        key, separator, value = line.partition("=")
        if separator and key.strip() and not key.startswith("#"):
            words = shlex.split(value, comments=False)
            fields[key.strip()] = words[0] if words else ""
    return fields


class OsReleaseFields(FactBase[dict[str, str]]):
    """
    Returns /etc/os-release with its keys as written (ID, VERSION_ID, VERSION_CODENAME, ...).
    """

    default = dict

    def command(self) -> str:
        return "cat /etc/os-release 2>/dev/null; true"

    def process(self, output: list[str]) -> dict[str, str]:
        return parse_os_release(output)


class CommandInstalled(FactBase[bool]):
    """
    Returns whether ``command_name`` is an executable on the PATH of the fact's shell.
    """

    @staticmethod
    def default() -> bool:
        return False

    def command(self, command_name: str) -> str:
        return f"command -v {shlex.quote(command_name)} || true"

    def process(self, output: list[str]) -> bool:
        return any(line.strip() for line in output)


def parse_python_version(output: list[str]) -> str | None:
    """``Python 3.11.2`` -> ``"3.11.2"``."""
    match = re.search(r"^Python (\S+)", "\n".join(output), re.MULTILINE)
    return match.group(1) if match else None


class Python3Version(FactBase[str | None]):
    """
    Returns the version of the ``python3`` on PATH, e.g. ``"3.11.2"``, or None without one.
    """

    def command(self) -> str:
        # Python before 3.4 printed --version on stderr.
        return "if command -v python3 >/dev/null 2>&1; then python3 --version 2>&1; fi; true"

    def process(self, output: list[str]) -> str | None:
        return parse_python_version(output)


class GpuHostStateInfo(TypedDict):
    os_release: dict[str, str]
    kernel_release: str | None
    pci_devices: list[PciDevice]
    secure_boot: SecureBootState
    nvidia_smi: NvidiaSmiInfo | None
    nvidia_kernel: NvidiaKernelInfo
    cuda: CudaToolkitsInfo
    toolkit_files: ToolkitFilesInfo
    cudnn_version: str | None
    packages: dict[str, DebPackageState]
    held_packages: list[str]
    apt_source_files: dict[str, list[str]]
    apt_offers: dict[str, list[AptOffer]]
    docker_daemon_config: DockerDaemonConfigInfo
    docker_info: DockerInfoData | None
    tensorflow_image_id: str | None
    dockerd_installed: bool
    python3_version: str | None
    gpu_users: GpuUsersInfo
    file_digests: dict[str, str]
    host_artifacts: list[str]
    symlink_targets: dict[str, str | None]
    units_running: dict[str, bool]
    units_enabled: dict[str, bool]
    unit_commands: dict[str, str]
    docker_group: DockerGroupInfo
    network_interfaces: list[str]
    mig_instances: MigInstancesInfo


# Section name -> the fact that gathers and parses it. Processing never needs the command
# arguments, so one instance serves every call.
SECTION_FACTS: dict[str, FactBase] = {
    "os_release": OsReleaseFields(),
    "kernel_release": KernelVersion(),
    "pci_devices": NvidiaPciDevices(),
    "secure_boot": SecureBoot(),
    "nvidia_smi": NvidiaSmi(),
    "nvidia_kernel": NvidiaKernel(),
    "cuda": CudaToolkits(),
    "toolkit_files": ToolkitFiles(),
    "cudnn_version": CudnnVersion(),
    "packages": DebPackageStates(),
    "held_packages": HeldPackages(),
    "apt_source_files": AptSourceFiles(),
    "apt_offers": AptOffers(),
    "docker_daemon_config": DockerDaemonConfig(),
    "docker_info": DockerInfo(),
    "tensorflow_image_id": DockerImageId(),
    "dockerd_installed": CommandInstalled(),
    "python3_version": Python3Version(),
    "gpu_users": GpuUsers(),
    "file_digests": FileDigests(),
    "host_artifacts": FolderFiles(),
    "symlink_targets": SymlinkTargets(),
    "units_running": SystemdStatus(),
    "units_enabled": SystemdEnabled(),
    "unit_commands": UnitMainCommands(),
    "docker_group": DockerGroup(),
    "network_interfaces": NetworkInterfaces(),
    "mig_instances": MigInstances(),
}


def section_arguments(
    packages: Sequence[str],
    repository_locations: Sequence[str],
    offered_packages: Sequence[str],
    daemon_json_path: str,
    files: Sequence[str],
    symlinks: Sequence[str],
    units: Sequence[str],
    toolkit_path: str,
    image: str,
    artifact_folder: str,
    users: Sequence[str],
    mig: bool,
) -> dict[str, dict[str, Any]]:
    """Each section's fact arguments (GpuHostState's, spread over its sections), {} for none."""
    arguments: dict[str, dict[str, Any]] = {
        "toolkit_files": {"path": toolkit_path},
        "tensorflow_image_id": {"image": image},
        "host_artifacts": {"path": artifact_folder},
        "packages": {"packages": list(packages)},
        "apt_source_files": {"locations": list(repository_locations)},
        "apt_offers": {"packages": list(offered_packages)},
        "docker_daemon_config": {"path": daemon_json_path},
        "dockerd_installed": {"command_name": "dockerd"},
        "file_digests": {"paths": list(files)},
        "symlink_targets": {"paths": list(symlinks)},
        "units_running": {"services": list(units)},
        "units_enabled": {"services": list(units)},
        "unit_commands": {"units": list(units)},
        "docker_group": {"users": list(users)},
        "mig_instances": {"wanted": mig},
    }
    return {name: arguments.get(name, {}) for name in SECTION_FACTS}


def section_commands(**arguments: Any) -> dict[str, str]:
    """Each section's command, built by its fact with the arguments it takes."""
    return {
        name: str(SECTION_FACTS[name].command(**fact_arguments))
        for name, fact_arguments in section_arguments(**arguments).items()
    }


def parse_gpu_host_state(output: list[str]) -> GpuHostStateInfo:
    sections = split_sections(output)
    state = {name: fact_value(fact, sections.get(name, [])) for name, fact in SECTION_FACTS.items()}
    return cast(GpuHostStateInfo, state)


class GpuHostState(FactBase[GpuHostStateInfo]):
    """
    Returns, in one round trip, what the individual facts return: os_release, kernel_release,
    pci_devices (NVIDIA's devices on the PCI bus), secure_boot, nvidia_smi, nvidia_kernel, cuda,
    toolkit_files (ToolkitFiles of ``toolkit_path``), cudnn_version, packages (DebPackageStates
    of ``packages``), held_packages, apt_source_files (AptSourceFiles of
    ``repository_locations``), apt_offers (AptOffers of ``offered_packages``),
    docker_daemon_config, docker_info, tensorflow_image_id (DockerImageId of ``image``),
    dockerd_installed, python3_version, gpu_users, file_digests (FileDigests of ``files``),
    host_artifacts (FolderFiles of ``artifact_folder``), symlink_targets (SymlinkTargets of
    ``symlinks``), units_running and units_enabled (SystemdStatus and SystemdEnabled of
    ``units``), unit_commands (UnitMainCommands of ``units``), docker_group (DockerGroup of
    ``users``), network_interfaces, mig_instances (MigInstances, read only with ``mig``).
    """

    @staticmethod
    def default() -> GpuHostStateInfo:
        return parse_gpu_host_state([])

    def command(
        self,
        packages: Sequence[str],
        repository_locations: Sequence[str] = (),
        offered_packages: Sequence[str] = (),
        daemon_json_path: str = "/etc/docker/daemon.json",
        files: Sequence[str] = (),
        symlinks: Sequence[str] = (),
        units: Sequence[str] = (),
        toolkit_path: str = "",
        image: str = "",
        artifact_folder: str = "",
        users: Sequence[str] = (),
        mig: bool = False,
    ) -> str:
        # Checked here: section_arguments' list() would split a string before the sections see it.
        require_lists(
            self,
            packages=packages,
            repository_locations=repository_locations,
            offered_packages=offered_packages,
            files=files,
            symlinks=symlinks,
            units=units,
            users=users,
        )
        return combined_command(
            section_commands(
                packages=packages,
                repository_locations=repository_locations,
                offered_packages=offered_packages,
                daemon_json_path=daemon_json_path,
                files=files,
                symlinks=symlinks,
                units=units,
                toolkit_path=toolkit_path,
                image=image,
                artifact_folder=artifact_folder,
                users=users,
                mig=mig,
            )
        )

    def process(self, output: list[str]) -> GpuHostStateInfo:
        return parse_gpu_host_state(output)
