"""
Options for the GPU host specification suite (pytest-testinfra):

    pytest tests/testinfra --hosts=ssh://root@gpu-01 [--gpufleet-data=data.json]
           [--container-image=IMAGE]

The specification is gpufleet's default stack, written out in correct_host.py. The inventory
data the host was built with (a JSON file of it) supplies only the repository URLs and docker's
settings; data that pins another stack is refused, since this specification does not describe it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.testinfra import correct_host
from tests.testinfra.correct_host import HostData

# The stack correct_host.py writes out, as inventory data.
SPECIFIED_STACK = {
    "nvidia_driver_branch": "470",
    "nvidia_driver_version": "470.182.03",
    "cuda_version": "11.2",
    "cuda_package_version": "11.2.2",
    "cudnn_version": "8.1.1.33",
    "nvidia_container_toolkit_version": "1.17.4",
}
DEFAULT_TENSORFLOW_IMAGE = "tensorflow/tensorflow:2.9.0-gpu"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gpufleet")
    group.addoption(
        "--gpufleet-data", help="JSON file of the inventory data the host was built with"
    )
    group.addoption(
        "--container-image",
        help="an image on the host to run with --runtime nvidia (default: tensorflow_image)",
    )


def inventory_data(config: pytest.Config) -> dict[str, Any]:
    path = config.getoption("--gpufleet-data")
    return json.loads(Path(path).read_text()) if path else {}


def pytest_configure(config: pytest.Config) -> None:
    data = inventory_data(config)
    for key, specified in SPECIFIED_STACK.items():
        if data.get(key, specified) != specified:
            raise pytest.UsageError(
                f"--gpufleet-data sets {key} = {data[key]!r}; this specification is written out "
                f"for {key} = {specified!r} (tests/testinfra/correct_host.py)"
            )


@pytest.fixture(scope="session")
def expected(pytestconfig: pytest.Config) -> HostData:
    data = inventory_data(pytestconfig)
    return HostData(
        cuda_repo_url=data.get("nvidia_cuda_repo_url") or correct_host.CUDA_REPO_URL,
        container_repo_url=data.get("nvidia_container_repo_url", correct_host.CONTAINER_REPO_URL),
        default_runtime=data.get("docker_default_runtime", correct_host.DEFAULT_RUNTIME),
        daemon_config=data.get("docker_daemon_config", {}),
        tensorflow_image=data.get("tensorflow_image", DEFAULT_TENSORFLOW_IMAGE),
    )


@pytest.fixture(scope="session")
def container_image(pytestconfig: pytest.Config, expected: HostData) -> str:
    return pytestconfig.getoption("--container-image") or expected.tensorflow_image
