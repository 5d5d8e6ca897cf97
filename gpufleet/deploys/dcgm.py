"""
NVIDIA DCGM from NVIDIA's CUDA repository: the release gpufleet pins for the driver branch
(gpufleet.stack.dcgm), pinned and held, and nv-hostengine running under nvidia-dcgm.service,
started at boot. The diagnostic runs in the verification (gpufleet.facts.dcgm.DcgmDiag).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable

from pyinfra.api import deploy
from pyinfra.operations import server
from pyinfra.operations.systemd import daemon_reload

from gpufleet.facts import snapshot
from gpufleet.facts.apt import DebPackageStates
from gpufleet.operations import packages as apt
from gpufleet.operations import units as systemd
from gpufleet.stack.dcgm import (
    DCGM_PACKAGE_PATTERNS,
    DCGM_SERVICE,
    dcgm_packages,
    dcgm_pin,
    replaced_dcgm_packages,
)
from gpufleet.stack.gpus import Architecture


@deploy("NVIDIA DCGM")
def dcgm(driver_branch: str, architectures: Iterable[Architecture], lock_timeout: int) -> None:
    """
    + driver_branch: the host's driver branch, e.g. "580": one of stack.dcgm.DCGM_PINS (check
      stack.dcgm.dcgm_problems while planning)
    + architectures: those of the host's GPUs gpufleet knows (R580's plugins depend on them)
    + lock_timeout: seconds to wait for another process's dpkg lock
    """
    version = dcgm_pin(driver_branch).version
    packages = dcgm_packages(driver_branch, architectures)
    states = snapshot.current(DebPackageStates, packages=list(DCGM_PACKAGE_PATTERNS))
    installed = [name for name, state in states.items() if state["installed"]]
    replaced = replaced_dcgm_packages(installed, packages)
    if replaced:
        # Held, apt would keep them, and the core at their version with them.
        server.shell(
            name=f"Remove the DCGM packages DCGM {version} replaces",
            commands=[
                apt.transaction(
                    [
                        f"{apt.apt_get(lock_timeout)} purge --allow-change-held-packages "
                        + " ".join(shlex.quote(name) for name in replaced)
                    ],
                    lock_timeout,
                )
            ],
        )
    apt.pinned_packages(
        name=f"DCGM {version} for R{driver_branch} (pinned, held)",
        packages=packages,
        lock_timeout=lock_timeout,
    )
    # Decided while planning, from the versions before the install: a hold alone changes no
    # binary.
    new_release = not all(
        apt.version_satisfied(states.get(name), pattern) for name, pattern in packages.items()
    )
    if new_release:
        # NVIDIA's packages install the unit without reloading systemd.
        daemon_reload(name="Reload systemd units")
    systemd.service(
        name="nv-hostengine running (nvidia-dcgm), started at boot",
        unit=DCGM_SERVICE,
        running=True,
        # The running nv-hostengine is the old release's until restarted.
        restarted=new_release,
        enabled=True,
    )
