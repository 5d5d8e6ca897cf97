"""
cuDNN built for the pinned CUDA release, pinned and held.

Unpinned, apt picks the newest libcudnn8, built for the newest CUDA (8.9.7.29-1+cuda12.2), which
TensorFlow 2.9 cannot load: the build suffix is part of the pin.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from gpufleet.operations import packages as apt
from gpufleet.settings import DATA_DEFAULTS, GpuSettings, read_settings
from gpufleet.stack import compat

CUDNN_PACKAGES = ("libcudnn8", "libcudnn8-dev")


def cudnn_packages(cudnn_version: str, cuda_version: str) -> dict[str, str | None]:
    pattern = compat.cudnn_package_version_glob(cudnn_version, cuda_version)
    return {package: pattern for package in CUDNN_PACKAGES}


@deploy("cuDNN", data_defaults=DATA_DEFAULTS)
def cudnn(settings: GpuSettings | None = None) -> None:
    settings = settings or read_settings(host.data)
    apt.pinned_packages(
        name=f"cuDNN {settings.cudnn_version} for CUDA {settings.cuda_version} (pinned, held)",
        packages=cudnn_packages(settings.cudnn_version, settings.cuda_version),
        lock_timeout=settings.gpu_apt_lock_timeout,
    )
