"""
gpufleet: NVIDIA GPU hosts provisioned with pyinfra, from a bare host to a proven TensorFlow GPU
machine. In a deploy file of your own:

    from gpufleet import gpu_host

    gpu_host()

or on the command line: `pyinfra inventory.py gpufleet.gpu_host`.
"""

from __future__ import annotations

from importlib import import_module, metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpufleet.deploys.audit import audit
    from gpufleet.deploys.driver_upgrade import driver_upgrade
    from gpufleet.deploys.gpu_host import gpu_host
    from gpufleet.deploys.verify import verify

__all__ = ["audit", "driver_upgrade", "gpu_host", "verify"]


def version() -> str:
    """gpufleet's installed version (pyproject.toml); "unknown" in a checkout never installed."""
    try:
        return metadata.version("gpufleet")
    except metadata.PackageNotFoundError:
        return "unknown"


def __getattr__(name: str) -> Any:
    # The deploys import pyinfra: loaded when asked for, so that `gpufleet.stack` stays a pure
    # knowledge layer to import.
    if name in __all__:
        return getattr(import_module(f"gpufleet.deploys.{name}"), name)
    raise AttributeError(f"module 'gpufleet' has no attribute {name!r}")
