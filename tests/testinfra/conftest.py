"""
Options for the GPU host specification suite (pytest-testinfra):

    pytest tests/testinfra --hosts=ssh://root@gpu-01 [--gpufleet-data=data.json]
           [--container-image=IMAGE]

The expected versions are gpufleet's defaults, overridden by the same keys as the inventory's
(a JSON file of inventory data).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpufleet.settings import DATA_DEFAULTS, GpuSettings, read_settings


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gpufleet")
    group.addoption(
        "--gpufleet-data", help="JSON file of the inventory data the host was built with"
    )
    group.addoption(
        "--container-image",
        help="an image on the host to run with --runtime nvidia (default: tensorflow_image)",
    )


@pytest.fixture(scope="session")
def expected(pytestconfig: pytest.Config) -> GpuSettings:
    data: dict[str, Any] = dict(DATA_DEFAULTS)
    path = pytestconfig.getoption("--gpufleet-data")
    if path:
        data.update(json.loads(Path(path).read_text()))
    return read_settings(data)


@pytest.fixture(scope="session")
def container_image(pytestconfig: pytest.Config, expected: GpuSettings) -> str:
    return pytestconfig.getoption("--container-image") or expected.tensorflow_image
