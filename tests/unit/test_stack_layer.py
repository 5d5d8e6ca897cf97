"""
gpufleet.stack is the pure knowledge layer: importing any of it must not import pyinfra, so
that tools and tests can use the tables without a deploy environment.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import gpufleet.stack
from gpufleet.stack.catalog import cudnn_packages
from gpufleet.stack.versions import CudnnPin, pattern_upstream, version_move


def test_no_stack_module_imports_pyinfra() -> None:
    modules = [
        info.name for info in pkgutil.walk_packages(gpufleet.stack.__path__, "gpufleet.stack.")
    ]
    assert {"gpufleet.stack.catalog", "gpufleet.stack.daemon_json"} <= set(modules)
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyinfra'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_a_cudnn_pin_in_each_shape_it_takes() -> None:
    pin = CudnnPin("8.1.1.33")
    assert (pin.major, pin.series, pin.header_version) == ("8", "8.1", "8.1.1")
    assert pin.apt_pattern("11.2") == "8.1.1.33-*+cuda11.2"
    assert cudnn_packages("8.1.1.33", "11.2") == {
        "libcudnn8": "8.1.1.33-*+cuda11.2",
        "libcudnn8-dev": "8.1.1.33-*+cuda11.2",
    }


def test_a_pin_move_reads_as_an_upgrade_or_a_downgrade() -> None:
    assert pattern_upstream("8.1.0.77-*+cuda11.2") == "8.1.0.77"
    assert pattern_upstream("535.183.01-*") == "535.183.01"
    assert version_move("8.1.1.33", "8.1.0.77") == "8.1.1.33 -> 8.1.0.77 (downgrade)"
    assert version_move("11.2.1", "11.2.2") == "11.2.1 -> 11.2.2 (upgrade)"
    assert version_move("1.17.8~rc.1", "1.17.8") == "1.17.8~rc.1 -> 1.17.8 (change)"
