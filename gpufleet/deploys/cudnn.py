"""
cuDNN built for the pinned CUDA release, pinned and held.

Unpinned, apt picks the newest libcudnn8, built for the newest CUDA (8.9.7.29-1+cuda12.2), which
TensorFlow 2.9 cannot load: the build suffix is part of the pin.
"""

from __future__ import annotations

from pyinfra.api import deploy

from gpufleet.operations import packages as apt
from gpufleet.stack import catalog


@deploy("cuDNN")
def cudnn(version: str, cuda_version: str, lock_timeout: int) -> None:
    """
    + version: the cuDNN package version, e.g. "8.1.1.33"
    + cuda_version: the CUDA release whose build is installed, e.g. "11.2"
    + lock_timeout: seconds to wait for another process's dpkg lock
    """
    apt.pinned_packages(
        name=f"cuDNN {version} for CUDA {cuda_version} (pinned, held)",
        packages=catalog.cudnn_packages(version, cuda_version),
        lock_timeout=lock_timeout,
    )
