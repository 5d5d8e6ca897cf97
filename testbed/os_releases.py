"""The OS releases test hosts boot: what the testbed needs to build, boot and mirror each one.

Written as literals, apart from gpufleet's own tables, so a test that boots an OS release checks
gpufleet's knowledge of it instead of repeating it. No registry host name appears here:
mmdebstrap picks each vendor's default mirror, and the testbed reads it back from the root
filesystem it built.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OsRelease:
    name: str  # how tests and the sandbox's --os name it: "ubuntu22.04", "debian12"
    vendor: str  # os-release ID
    version_id: str  # os-release VERSION_ID
    suite: str  # the archive's codename
    # Archive components the hosts need: Ubuntu's docker.io is in universe.
    components: tuple[str, ...]
    # NVIDIA's CUDA repository directory for this release.
    cuda_directory: str
    # The release's python3, for which pip picks wheels (test images).
    python: str


_UBUNTU = ("main", "universe")
_DEBIAN = ("main",)
OS_RELEASES: dict[str, OsRelease] = {
    release.name: release
    for release in (
        OsRelease("ubuntu20.04", "ubuntu", "20.04", "focal", _UBUNTU, "ubuntu2004", "3.8"),
        OsRelease("ubuntu22.04", "ubuntu", "22.04", "jammy", _UBUNTU, "ubuntu2204", "3.10"),
        OsRelease("ubuntu24.04", "ubuntu", "24.04", "noble", _UBUNTU, "ubuntu2404", "3.12"),
        OsRelease("debian11", "debian", "11", "bullseye", _DEBIAN, "debian11", "3.9"),
        OsRelease("debian12", "debian", "12", "bookworm", _DEBIAN, "debian12", "3.11"),
        OsRelease("debian13", "debian", "13", "trixie", _DEBIAN, "debian13", "3.13"),
    )
}  # fmt: skip

# What the sandbox boots unless told otherwise: the one release whose NVIDIA repository carries
# CUDA 11.2, so the default stack converges from apt. The sandbox does not serve the stand-in
# runfile and cuDNN archive yet, so `--os ubuntu22.04` shows the refusal naming their keys
# (tests/e2e/test_artifacts.py converges Ubuntu 22.04 with them).
DEFAULT_SANDBOX_OS = "ubuntu20.04"
