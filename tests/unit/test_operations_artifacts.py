"""
gpufleet/operations/artifacts.py in pyinfra's operation fixture style: each case gives the
operation's arguments, the facts it reads and exactly the commands it yields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gpufleet.operations.artifacts import (
    archive_cudnn,
    loaded_image,
    pulled_image,
    received,
    runfile_toolkit,
)
from tests.fakehost import OperationCase, operation_commands

RUNFILE_SHA256 = "1" * 64
CUDNN_SHA256 = "2" * 64
IMAGE_SHA256 = "3" * 64
ARTIFACTS = "/var/cache/gpufleet/artifacts"


def check(path: str, sha256: str) -> str:
    """The digest check every use of an artifact starts with."""
    return (
        f"echo '{sha256}  {path}' | sha256sum --check --status || "
        f'{{ echo "{path}: sha256 $(sha256sum < {path} | cut -c1-64), not the pinned {sha256}" '
        ">&2; false; }"
    )


CHECK_RUNFILE = check(f"{ARTIFACTS}/{RUNFILE_SHA256}", RUNFILE_SHA256) + " || exit 1"
NO_TOOLKIT: dict[str, Any] = {
    "cuda_version": None,
    "runfile_uninstaller": False,
    "cudnn_version": None,
    "libraries": {},
}
# What the runfile leaves when stopped before the libraries: version.json and nvcc only.
INTERRUPTED_RUNFILE: dict[str, Any] = {
    **NO_TOOLKIT,
    "cuda_version": "11.2.2",
    "runfile_uninstaller": True,
}
RUNFILE_TOOLKIT: dict[str, Any] = {
    **INTERRUPTED_RUNFILE,
    "libraries": {"libcudart.so.11.0": "libcudart.so.11.2.152", "libcudart.so.11.2.152": None},
}
NVCC_11_2 = {
    "toolkits": {"11.2": {"path": "/usr/local/cuda-11.2", "nvcc_release": "11.2"}},
    "default_path": None,
}
CUDNN_8_1_1_FILES = {
    "libcudnn.so": "libcudnn.so.8",
    "libcudnn.so.8": "libcudnn.so.8.1.1",
    "libcudnn.so.8.1.1": None,
    **{
        name: target
        for part in ("adv_infer", "adv_train", "cnn_infer", "cnn_train", "ops_infer", "ops_train")
        for name, target in (
            (f"libcudnn_{part}.so", f"libcudnn_{part}.so.8"),
            (f"libcudnn_{part}.so.8", f"libcudnn_{part}.so.8.1.1"),
            (f"libcudnn_{part}.so.8.1.1", None),
        )
    },
}
CUDNN_ARGS = {"sha256": CUDNN_SHA256, "cudnn_version": "8.1.1.33", "cuda_version": "11.2"}


def runfile_commands(package_version: str) -> list[str]:
    log = f"/var/log/gpufleet/cuda-runfile-{package_version}.log"
    return [
        "mkdir -p /var/log/gpufleet /var/cache/gpufleet/tmp",
        f"{CHECK_RUNFILE}; sh {ARTIFACTS}/{RUNFILE_SHA256} --silent --toolkit --no-opengl-libs "
        "--no-man-page --no-drm --override --toolkitpath=/usr/local/cuda-11.2 "
        f"--tmpdir=/var/cache/gpufleet/tmp >{log} 2>&1 || {{ status=$?; tail -n 25 {log}; "
        f'echo "the CUDA runfile failed (exit $status), its log: {log}" >&2; exit 1; }}',
    ]


CASES: list[tuple[Any, OperationCase]] = [
    (
        runfile_toolkit,
        OperationCase(
            id="runfile-on-a-bare-host",
            args={"sha256": RUNFILE_SHA256, "package_version": "11.2.2"},
            facts={
                "ToolkitFiles": NO_TOOLKIT,
                "CudaToolkits": {"toolkits": {}, "default_path": None},
            },
            commands=runfile_commands("11.2.2"),
        ),
    ),
    (
        runfile_toolkit,
        OperationCase(
            id="runfile-interrupted-before-the-libraries-runs-again",
            args={"sha256": RUNFILE_SHA256, "package_version": "11.2.2"},
            facts={"ToolkitFiles": INTERRUPTED_RUNFILE, "CudaToolkits": NVCC_11_2},
            commands=runfile_commands("11.2.2"),
        ),
    ),
    (
        runfile_toolkit,
        OperationCase(
            id="runfile-toolkit-installed",
            args={"sha256": RUNFILE_SHA256, "package_version": "11.2.2"},
            facts={"ToolkitFiles": RUNFILE_TOOLKIT, "CudaToolkits": NVCC_11_2},
            commands=[],
        ),
    ),
    (
        runfile_toolkit,
        OperationCase(
            id="runfile-of-another-release-is-replaced",
            args={"sha256": RUNFILE_SHA256, "package_version": "11.2.1"},
            facts={"ToolkitFiles": RUNFILE_TOOLKIT, "CudaToolkits": NVCC_11_2},
            commands=runfile_commands("11.2.1"),
        ),
    ),
    (
        archive_cudnn,
        OperationCase(
            id="cudnn-archive-installed",
            args=CUDNN_ARGS,
            facts={
                "ToolkitFiles": {
                    **RUNFILE_TOOLKIT,
                    "cudnn_version": "8.1.1",
                    "libraries": {**RUNFILE_TOOLKIT["libraries"], **CUDNN_8_1_1_FILES},
                }
            },
            commands=[],
        ),
    ),
    (
        archive_cudnn,
        OperationCase(
            id="cudnn-archive-with-a-split-library-missing",
            args=CUDNN_ARGS,
            facts={
                "ToolkitFiles": {
                    **RUNFILE_TOOLKIT,
                    "cudnn_version": "8.1.1",
                    "libraries": {
                        name: target
                        for name, target in CUDNN_8_1_1_FILES.items()
                        if name != "libcudnn_ops_train.so.8.1.1"
                    },
                }
            },
            commands=[
                "mkdir -p /var/cache/gpufleet/tmp",
                check(f"{ARTIFACTS}/{CUDNN_SHA256}", CUDNN_SHA256) + " || exit 1; "
                "scratch=$(mktemp -d /var/cache/gpufleet/tmp/cudnn.XXXXXX) && trap "
                f'\'rm -rf "$scratch"\' EXIT; tar -xzf {ARTIFACTS}/{CUDNN_SHA256} -C "$scratch" '
                '--no-same-owner || exit 1; header=$(find "$scratch" -path '
                "'*/include/cudnn_version.h' | head -n 1); [ -n \"$header\" ] || { echo "
                f'"{ARTIFACTS}/{CUDNN_SHA256} holds no include/cudnn_version.h: not a cuDNN '
                'archive" >&2; exit 1; }; root=$(dirname "$(dirname "$header")"); '
                'lib="$root/lib64"; [ -d "$lib" ] || lib="$root/lib"; rm -f '
                "/usr/local/cuda-11.2/include/cudnn*.h /usr/local/cuda-11.2/lib64/libcudnn*; "
                'cp -P "$root"/include/cudnn*.h /usr/local/cuda-11.2/include/ && cp -P '
                '"$lib"/libcudnn* /usr/local/cuda-11.2/lib64/',
            ],
        ),
    ),
    (
        loaded_image,
        OperationCase(
            id="image-present",
            args={"image": "tensorflow/tensorflow:2.9.0-gpu", "sha256": IMAGE_SHA256},
            facts={"DockerImageId": "sha256:" + "a" * 64},
            commands=[],
        ),
    ),
    (
        loaded_image,
        OperationCase(
            id="image-absent",
            args={"image": "tensorflow/tensorflow:2.9.0-gpu", "sha256": IMAGE_SHA256},
            facts={"DockerImageId": None},
            commands=[
                check(f"{ARTIFACTS}/{IMAGE_SHA256}", IMAGE_SHA256) + " || exit 1; "
                f"docker load --input {ARTIFACTS}/{IMAGE_SHA256} || exit 1; docker "
                "image inspect tensorflow/tensorflow:2.9.0-gpu >/dev/null 2>&1 || { echo "
                f'"{ARTIFACTS}/{IMAGE_SHA256} does not hold the image "'
                "tensorflow/tensorflow:2.9.0-gpu >&2; exit 1; }",
            ],
        ),
    ),
    (
        pulled_image,
        OperationCase(
            id="pull-image-present",
            args={"image": "tensorflow/tensorflow:2.9.0-gpu", "timeout": 1800},
            facts={"DockerImageId": "sha256:" + "a" * 64},
            commands=[],
        ),
    ),
    (
        pulled_image,
        OperationCase(
            id="pull-image-absent",
            args={"image": "tensorflow/tensorflow:2.9.0-gpu", "timeout": 1800},
            facts={"DockerImageId": None},
            commands=["timeout 1800 docker pull --quiet tensorflow/tensorflow:2.9.0-gpu"],
        ),
    ),
    (
        pulled_image,
        OperationCase(
            id="pull-image-through-a-mirror",
            args={
                "image": "tensorflow/tensorflow:2.9.0-gpu",
                "timeout": 600,
                "registry_mirror": "registry.local:5000",
            },
            facts={"DockerImageId": None},
            commands=[
                "timeout 600 docker pull --quiet "
                "registry.local:5000/tensorflow/tensorflow:2.9.0-gpu",
                "docker tag registry.local:5000/tensorflow/tensorflow:2.9.0-gpu "
                "tensorflow/tensorflow:2.9.0-gpu",
            ],
        ),
    ),
]


@pytest.mark.parametrize(("operation", "case"), CASES, ids=[case.id for _, case in CASES])
def test_operation(operation: Any, case: OperationCase) -> None:
    planned = operation_commands(operation, case.args, case.facts)
    assert planned.commands == case.commands
    assert planned.uploads == case.uploads


def test_an_artifact_is_sent_then_checked_before_it_takes_its_name(tmp_path: Path) -> None:
    runfile = tmp_path / "cached-runfile"
    runfile.write_bytes(b"#!/bin/sh\n")
    final = f"{ARTIFACTS}/{RUNFILE_SHA256}"
    planned = operation_commands(
        received, {"local_path": str(runfile), "sha256": RUNFILE_SHA256}, {"FolderFiles": []}
    )
    assert planned.commands == [
        f"install -d -m 700 {ARTIFACTS}",
        f"upload {final}.part",
        check(f"{final}.part", RUNFILE_SHA256)
        + f" || {{ rm -f {final}.part; exit 1; }}; mv {final}.part {final}",
    ]
    assert planned.uploads == {f"{final}.part": b"#!/bin/sh\n"}


def test_an_artifact_the_host_has_is_not_sent_again(tmp_path: Path) -> None:
    planned = operation_commands(
        received,
        {"local_path": str(tmp_path / "not-read"), "sha256": RUNFILE_SHA256},
        {"FolderFiles": [RUNFILE_SHA256]},
    )
    assert planned.commands == []


def test_nothing_is_sent_for_an_installed_component() -> None:
    planned = operation_commands(
        received, {"local_path": None, "sha256": RUNFILE_SHA256}, {"FolderFiles": []}
    )
    assert planned.commands == []
