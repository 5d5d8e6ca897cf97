"""
nvidia-container-toolkit from NVIDIA's libnvidia-container repository, pinned and held.

The toolkit depends on `libnvidia-container-tools (>= V), (<< 2.0.0)`: without pinning every
package of the set, apt would take the newest tools under an old toolkit.
"""

from __future__ import annotations

from pyinfra.api import deploy

from gpufleet.operations import packages as apt
from gpufleet.settings import GpuSettings

CONTAINER_REPO_NAME = "nvidia-container-toolkit"
CONTAINER_TOOLKIT_PACKAGES = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)


def container_toolkit_packages(version: str) -> dict[str, str | None]:
    return {package: f"{version}-*" for package in CONTAINER_TOOLKIT_PACKAGES}


@deploy("NVIDIA container toolkit")
def nvidia_container_toolkit(settings: GpuSettings, keyring: bytes) -> None:
    apt.signed_repository(
        name="NVIDIA container toolkit repository (signed-by its own keyring)",
        repository=CONTAINER_REPO_NAME,
        url=settings.nvidia_container_repo_url,
        keyring=keyring,
    )
    apt.pinned_packages(
        name=f"nvidia-container-toolkit {settings.nvidia_container_toolkit_version} (pinned, held)",
        packages=container_toolkit_packages(settings.nvidia_container_toolkit_version),
        lock_timeout=settings.gpu_apt_lock_timeout,
    )
