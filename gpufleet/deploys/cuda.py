"""
NVIDIA's CUDA apt repository and the CUDA toolkit, pinned and held, or from NVIDIA's runfile.

The toolkit is `cuda-toolkit-X-Y`, never `cuda-X-Y`: the latter pulls `cuda-runtime-X-Y`, which
pulls `cuda-drivers (>= ...)`, the newest driver of all, past every pin. The runfile installs
the toolkit only (gpufleet.operations.artifacts). Either way /usr/local/cuda, PATH and the
loader path are managed the same.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.operations import server

from gpufleet.facts import snapshot
from gpufleet.facts.cuda import CudaToolkits
from gpufleet.facts.pyinfra_internals import changes_host
from gpufleet.operations import artifacts
from gpufleet.operations import managed_files as files
from gpufleet.operations import packages as apt
from gpufleet.stack import catalog, installers

CUDA_REPO_NAME = "cuda"
CUDA_DEFAULT_LINK = "/usr/local/cuda"
PROFILE_PATH = "/etc/profile.d/cuda.sh"
LD_CONF_PATH = "/etc/ld.so.conf.d/cuda.conf"


def environment_files(cuda_version: str) -> dict[str, str]:
    """PATH for login shells and the loader path, both through the /usr/local/cuda link."""
    return {
        PROFILE_PATH: (
            "# Managed by gpufleet.\n"
            f'case ":$PATH:" in *":{CUDA_DEFAULT_LINK}/bin:"*) ;; '
            f'*) export PATH="{CUDA_DEFAULT_LINK}/bin${{PATH:+:$PATH}}" ;; esac\n'
        ),
        LD_CONF_PATH: f"# Managed by gpufleet.\n{CUDA_DEFAULT_LINK}/lib64\n",
    }


@operation()
def default_toolkit(path: str):
    """
    Point /usr/local/cuda at one toolkit.

    + path: the toolkit directory, e.g. /usr/local/cuda-11.2

    NVIDIA's packages manage /usr/local/cuda as the `cuda` alternative when they install it;
    gpufleet sets the alternative then, and the link itself otherwise.
    """
    toolkits = snapshot.current(CudaToolkits)
    if toolkits["default_path"] == path:
        host.noop(f"{CUDA_DEFAULT_LINK} already points at {path}")
        return
    quoted = shlex.quote(path)
    yield (
        f"if update-alternatives --query cuda >/dev/null 2>&1; "
        f"then update-alternatives --set cuda {quoted}; "
        f"else ln -sfn {quoted} {CUDA_DEFAULT_LINK}; fi"
    )


@deploy("NVIDIA CUDA repository")
def cuda_repository(url: str, keyring: bytes) -> None:
    apt.signed_repository(
        name="NVIDIA CUDA repository (signed-by its own keyring)",
        repository=CUDA_REPO_NAME,
        url=url,
        keyring=keyring,
    )


@deploy("CUDA toolkit")
def cuda_toolkit(
    cuda_version: str,
    package_version: str,
    lock_timeout: int,
    runfile_sha256: str | None = None,
    runfile_to_send: str | None = None,
) -> None:
    """
    + cuda_version: the CUDA release, e.g. "11.2"
    + package_version: its exact toolkit release, e.g. "11.2.2"
    + lock_timeout: seconds to wait for another process's dpkg lock
    + runfile_sha256: install from NVIDIA's runfile with this digest instead of apt
    + runfile_to_send: the runfile on the controller, where the host needs it sent
    """
    if runfile_sha256 is None:
        packages = catalog.cuda_toolkit_packages(cuda_version, package_version)
        toolkit = apt.pinned_packages(
            name=f"CUDA toolkit {package_version} (pinned, held){apt.pin_moves(packages)}",
            packages=packages,
            lock_timeout=lock_timeout,
        )
    else:
        artifacts.received(
            name=f"Send the CUDA {package_version} runfile",
            local_path=runfile_to_send,
            sha256=runfile_sha256,
        )
        toolkit = artifacts.runfile_toolkit(
            name=f"CUDA toolkit {package_version} (NVIDIA's runfile, toolkit only)",
            sha256=runfile_sha256,
            package_version=package_version,
        )
    environment = files.contents(
        name="CUDA on PATH and the loader path",
        files=environment_files(cuda_version),
    )
    default_toolkit(
        name=f"{CUDA_DEFAULT_LINK} -> CUDA {cuda_version}",
        path=installers.toolkit_path(cuda_version),
    )
    if changes_host(toolkit) or changes_host(environment):
        server.shell(name="Refresh the loader cache", commands=["ldconfig"])
