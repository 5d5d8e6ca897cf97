"""
How a pinned version reads in each place it appears: apt version patterns, the version a tool
on the host reports, the release series the compatibility tables are keyed by.
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.version import InvalidVersion, Version


def major_minor(version: str) -> str:
    """``11.2.2`` -> ``11.2``: the release series."""
    return ".".join(version.split(".")[:2])


def upstream_version(debian_version: str) -> str:
    """``470.182.03-1`` -> ``470.182.03`` (epoch and Debian revision dropped)."""
    return debian_version.split(":")[-1].rsplit("-", 1)[0]


def pattern_upstream(version_pattern: str) -> str:
    """``8.1.0.77-*+cuda11.2`` -> ``8.1.0.77``: the upstream version an apt pattern pins."""
    return version_pattern.split("-", 1)[0]


def version_direction(current: str, target: str) -> str:
    """Which way going from ``current`` to ``target`` is: upgrade, downgrade or (unparsable)
    change."""
    try:
        return "downgrade" if Version(target) < Version(current) else "upgrade"
    except InvalidVersion:
        return "change"


def version_move(installed: str, wanted: str) -> str:
    """``8.1.1.33 -> 8.1.0.77 (downgrade)``: how a pin moves an installed upstream version."""
    return f"{installed} -> {wanted} ({version_direction(installed, wanted)})"


def any_revision(version: str) -> str:
    """The apt version pattern for every Debian revision of an upstream version."""
    return f"{version}-*"


@dataclass(frozen=True)
class CudnnPin:
    """
    A cuDNN package version, e.g. ``8.1.1.33``. NVIDIA builds each for several CUDA releases
    (``8.1.1.33-1+cuda11.2``), and cudnn_version.h carries only major.minor.patch.
    """

    version: str

    @property
    def major(self) -> str:
        """``8``: the soname (libcudnn.so.8) and the package names (libcudnn8)."""
        return self.version.split(".")[0]

    @property
    def series(self) -> str:
        """``8.1``: the release the compatibility tables list."""
        return major_minor(self.version)

    @property
    def header_version(self) -> str:
        """``8.1.1``: what cudnn_version.h, and so verification, reports."""
        return ".".join(self.version.split(".")[:3])

    def apt_pattern(self, cuda_version: str) -> str:
        """The build made for this CUDA release, e.g. ``8.1.1.33-*+cuda11.2``."""
        return f"{any_revision(self.version)}+cuda{cuda_version}"
