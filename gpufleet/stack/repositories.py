"""
NVIDIA's CUDA apt repositories, one per OS release directory: which driver branches, CUDA
releases and cuDNN builds each carries, how it names the driver's packages, and the key that
signs it. The sources of every fact, and what could not be confirmed, are in SOURCES.md beside
this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

NVIDIA_CUDA_REPO_BASE = "https://developer.download.nvidia.com/compute/cuda/repos"


class DriverNaming(str, Enum):
    # nvidia-driver-580, libnvidia-compute-580, ... (Canonical's packaging, branch suffixed).
    UBUNTU = "ubuntu"
    # nvidia-driver, nvidia-kernel-dkms, libcuda1, ... (Debian's packaging, one name per role).
    DEBIAN = "debian"


@dataclass(frozen=True)
class RepositoryKey:
    file_name: str  # beside the repository's InRelease
    fingerprint: str


# The 2022 key (3bf863cc) that replaced the withdrawn 7fa2af80.
KEY_3BF863CC = RepositoryKey("3bf863cc.pub", "EB693B3035CD5710E231E123A4B469963BF863CC")
# The 2026 key of debian13: apt's sqv verifier on Debian 13 rejects the SHA1-bound 3bf863cc
# since 2026-02-01.
KEY_8793F200 = RepositoryKey("8793F200.pub", "02182E60104FCDC26EAE1B8597A5D4CB8793F200")


@dataclass(frozen=True)
class CudaRepository:
    directory: str
    naming: DriverNaming
    # Branches with packages of their own (cuda-drivers-<branch>), oldest first.
    driver_branches: tuple[str, ...]
    # CUDA releases with a cuda-toolkit-X-Y package.
    cuda_releases: tuple[str, ...]
    # CUDA releases the repository has libcudnn8 builds (+cudaX.Y) for.
    cudnn8_cuda_builds: tuple[str, ...]
    key: RepositoryKey

    @property
    def url(self) -> str:
        return f"{NVIDIA_CUDA_REPO_BASE}/{self.directory}/x86_64/"


def _series(first: tuple[int, int], last: tuple[int, int]) -> tuple[str, ...]:
    """CUDA releases from ``first`` to ``last``, as NVIDIA numbered them (11.0-11.8, 12.0-12.9,
    13.0-...)."""
    releases = [f"11.{minor}" for minor in range(9)] + [f"12.{minor}" for minor in range(10)]
    releases += [f"13.{minor}" for minor in range(3)]
    start = releases.index(f"{first[0]}.{first[1]}")
    end = releases.index(f"{last[0]}.{last[1]}")
    return tuple(releases[start : end + 1])


CUDA_REPOSITORIES: dict[str, CudaRepository] = {
    repository.directory: repository
    for repository in (
        CudaRepository(
            "ubuntu2004",
            DriverNaming.UBUNTU,
            # R580 and later: none (CUDA 13 dropped Ubuntu 20.04); 570 the newest (inferred).
            ("450", "455", "460", "465", "470", "495", "510", "515", "520", "525", "530",
             "535", "545", "550", "555", "560", "565", "570"),
            _series((11, 0), (12, 8)),
            ("10.2", "11.0", "11.1", "11.2", "11.3", "11.4", "11.5", "11.6", "11.7", "11.8",
             "12.0", "12.1", "12.2"),
            KEY_3BF863CC,
        ),
        CudaRepository(
            "ubuntu2204",
            DriverNaming.UBUNTU,
            ("515", "520", "525", "530", "535", "545", "550", "555", "560", "565", "570",
             "575", "580", "590", "595"),
            _series((11, 7), (13, 2)),
            ("11.8", "12.0", "12.1", "12.2"),
            KEY_3BF863CC,
        ),
        CudaRepository(
            "ubuntu2404",
            DriverNaming.UBUNTU,
            ("550", "555", "560", "565", "570", "575", "580", "590", "595"),
            _series((12, 5), (13, 2)),
            (),
            KEY_3BF863CC,
        ),
        CudaRepository(
            "debian11",
            DriverNaming.DEBIAN,
            # Branches and CUDA range not confirmed (12.6 the last CUDA for Debian 11).
            ("470", "510", "515", "520", "525", "530", "535", "545", "550", "555", "560"),
            _series((11, 4), (12, 6)),
            ("11.8", "12.0", "12.1", "12.2"),
            KEY_3BF863CC,
        ),
        CudaRepository(
            "debian12",
            DriverNaming.DEBIAN,
            ("545", "550", "555", "560", "565", "570", "575", "580", "590", "595"),
            _series((12, 3), (13, 2)),
            (),
            KEY_3BF863CC,
        ),
        CudaRepository(
            "debian13",
            DriverNaming.DEBIAN,
            # No R580 at all: 590 and later only (NVIDIA/cuda-repo-management#38, #40).
            ("590", "595", "610"),
            _series((13, 0), (13, 2)),
            (),
            KEY_8793F200,
        ),
    )
}  # fmt: skip


def repository_of(os_id: str, version_id: str) -> CudaRepository | None:
    """NVIDIA's repository for an OS release (ubuntu 22.04 -> ubuntu2204), None if it has none."""
    return CUDA_REPOSITORIES.get(f"{os_id}{version_id.replace('.', '')}")


def repository_named_in(url: str) -> CudaRepository | None:
    """The repository whose directory a mirror's URL names (``.../ubuntu2004/x86_64/``)."""
    parts = [part for part in url.split("/") if part]
    return next((CUDA_REPOSITORIES[p] for p in reversed(parts) if p in CUDA_REPOSITORIES), None)
