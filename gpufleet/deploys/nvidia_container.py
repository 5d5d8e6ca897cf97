"""
nvidia-container-toolkit from NVIDIA's libnvidia-container repository, pinned and held, with
every package of its set (gpufleet.stack.catalog).
"""

from __future__ import annotations

from pyinfra.api import deploy

from gpufleet.operations import packages as apt
from gpufleet.stack import catalog

CONTAINER_REPO_NAME = "nvidia-container-toolkit"


@deploy("NVIDIA container toolkit")
def nvidia_container_toolkit(
    version: str, repo_url: str, keyring: bytes, lock_timeout: int
) -> None:
    """
    + version: the toolkit version, e.g. "1.17.4"
    + repo_url: the libnvidia-container apt repository
    + keyring: its checked binary keyring (gpufleet.repository_keys)
    + lock_timeout: seconds to wait for another process's dpkg lock
    """
    apt.signed_repository(
        name="NVIDIA container toolkit repository (signed-by its own keyring)",
        repository=CONTAINER_REPO_NAME,
        url=repo_url,
        keyring=keyring,
    )
    packages = catalog.container_toolkit_packages(version)
    apt.pinned_packages(
        name=f"nvidia-container-toolkit {version} (pinned, held){apt.pin_moves(packages)}",
        packages=packages,
        lock_timeout=lock_timeout,
    )
