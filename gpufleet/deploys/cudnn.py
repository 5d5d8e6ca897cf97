"""
cuDNN built for the pinned CUDA release, pinned and held, or unpacked from NVIDIA's archive.

Unpinned, apt picks the newest libcudnn8, built for the newest CUDA (8.9.7.29-1+cuda12.2), which
TensorFlow 2.9 cannot load: the build suffix is part of the pin.
"""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import server

from gpufleet.facts.pyinfra_internals import changes_host
from gpufleet.operations import artifacts
from gpufleet.operations import packages as apt
from gpufleet.stack import catalog


@deploy("cuDNN")
def cudnn(
    version: str,
    cuda_version: str,
    lock_timeout: int,
    archive_sha256: str | None = None,
    archive_to_send: str | None = None,
) -> None:
    """
    + version: the cuDNN package version, e.g. "8.1.1.33"
    + cuda_version: the CUDA release whose build is installed, e.g. "11.2"
    + lock_timeout: seconds to wait for another process's dpkg lock
    + archive_sha256: unpack NVIDIA's tar archive with this digest into the toolkit instead
    + archive_to_send: the archive on the controller, where the host needs it sent
    """
    if archive_sha256 is not None:
        artifacts.received(
            name=f"Send the cuDNN {version} archive",
            local_path=archive_to_send,
            sha256=archive_sha256,
        )
        unpacked = artifacts.archive_cudnn(
            name=f"cuDNN {version} for CUDA {cuda_version} (NVIDIA's archive)",
            sha256=archive_sha256,
            cudnn_version=version,
            cuda_version=cuda_version,
        )
        if changes_host(unpacked):
            server.shell(name="Refresh the loader cache", commands=["ldconfig"])
        return
    packages = catalog.cudnn_packages(version, cuda_version)
    apt.pinned_packages(
        name=f"cuDNN {version} for CUDA {cuda_version} (pinned, held){apt.pin_moves(packages)}",
        packages=packages,
        lock_timeout=lock_timeout,
    )
