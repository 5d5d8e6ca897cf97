"""The compatibility planner: good stacks pass, each bad one names its data key, value and a fix."""

from __future__ import annotations

import dataclasses

import pytest

from gpufleet.preflight import refusal_message
from gpufleet.stack import compat

GOOD = compat.StackRequest(
    nvidia_driver_branch="470",
    nvidia_driver_version="470.182.03",
    cuda_version="11.2",
    cuda_package_version="11.2.2",
    cudnn_version="8.1.1.33",
    nvidia_container_toolkit_version="1.17.4",
    tensorflow_image="tensorflow/tensorflow:2.9.0-gpu",
    nvidia_cuda_repo_url=None,
)
UBUNTU_2004 = compat.HostPlatform("ubuntu", "20.04")
DEBIAN_12 = compat.HostPlatform("debian", "12")


def test_default_stack_on_ubuntu_2004_passes() -> None:
    assert compat.check_stack(GOOD, UBUNTU_2004) == []


def test_driver_460_32_on_the_usual_pairing_passes() -> None:
    request = dataclasses.replace(
        GOOD, nvidia_driver_branch="460", nvidia_driver_version="460.32.03"
    )
    assert compat.check_stack(request, UBUNTU_2004) == []


def test_driver_under_minor_version_compatibility_passes() -> None:
    # 450.80.02 runs any CUDA 11.x runtime (CUDA minor-version compatibility).
    request = dataclasses.replace(
        GOOD, nvidia_driver_branch="450", nvidia_driver_version="450.80.02"
    )
    assert compat.check_stack(request, UBUNTU_2004) == []


def test_driver_450_51_with_cuda_11_2_is_refused() -> None:
    request = dataclasses.replace(GOOD, nvidia_driver_branch="450", nvidia_driver_version="450.51")
    (problem,) = compat.check_stack(request, UBUNTU_2004)
    assert problem.startswith("nvidia_driver_version = '450.51' is too old for CUDA 11.2.2")
    assert ">= 460.32.03" in problem and ">= 450.80.02" in problem


def test_cudnn_8_1_with_cuda_12_2_is_refused() -> None:
    request = dataclasses.replace(
        GOOD,
        cuda_version="12.2",
        cuda_package_version="12.2.2",
        nvidia_driver_branch="535",
        nvidia_driver_version="535.183.01",
        tensorflow_image="example/custom-training-image:latest",
    )
    (problem,) = compat.check_stack(request, UBUNTU_2004)
    assert problem == (
        "cudnn_version = '8.1.1.33': cuDNN 8.1 was built for CUDA 10.2, 11.2, not "
        "cuda_version = '12.2'; for CUDA 12.2 use cuDNN 8.9"
    )


def test_unknown_cuda_release_is_refused_with_the_known_ones() -> None:
    request = dataclasses.replace(GOOD, cuda_version="11.9")
    (problem,) = compat.check_stack(request, UBUNTU_2004)
    assert problem.startswith("cuda_version = '11.9' is not a CUDA release gpufleet knows")
    assert "11.2" in problem and "11.8" in problem


def test_package_version_outside_the_cuda_release_is_refused() -> None:
    request = dataclasses.replace(GOOD, cuda_package_version="11.4.0")
    (problem,) = compat.check_stack(request, UBUNTU_2004)
    assert "cuda_package_version = '11.4.0'" in problem
    assert "11.2.0, 11.2.1, 11.2.2" in problem


def test_debian_12_without_a_mirror_is_refused_for_cuda_11_2() -> None:
    (problem,) = compat.check_stack(GOOD, DEBIAN_12)
    assert problem.startswith(
        "nvidia_cuda_repo_url is not set and NVIDIA's debian12 repository does not carry CUDA 11.2"
    )
    assert "ubuntu1804, ubuntu2004" in problem


def test_debian_12_with_a_mirror_is_trusted() -> None:
    request = dataclasses.replace(GOOD, nvidia_cuda_repo_url="http://mirror.example/cuda/")
    assert compat.check_stack(request, DEBIAN_12) == []


def test_tensorflow_2_9_needs_cuda_11_2_and_cudnn_8_1() -> None:
    request = dataclasses.replace(GOOD, cudnn_version="8.2.4.15", cuda_version="11.2")
    problems = compat.check_stack(request, UBUNTU_2004)
    assert any(
        p.startswith("cudnn_version = '8.2.4.15': cuDNN 8.2 was built for") for p in problems
    )
    assert any("TensorFlow 2.9 needs cuDNN 8.1" in p for p in problems)


def test_driver_version_off_its_branch_is_refused() -> None:
    request = dataclasses.replace(GOOD, nvidia_driver_branch="535")
    (problem,) = compat.check_stack(request, UBUNTU_2004)
    assert "is not on nvidia_driver_branch = '535'" in problem


def test_unsupported_os_is_refused() -> None:
    problems = compat.check_stack(GOOD, compat.HostPlatform("centos", "7"))
    assert problems[0].startswith("host OS centos 7 is not supported")


def test_refusal_lists_every_problem_and_says_nothing_changed() -> None:
    assert refusal_message(["first problem", "second problem"]) == (
        "refusing to deploy, nothing was changed on the host:\n"
        "  - first problem\n  - second problem"
    )


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("tensorflow/tensorflow:2.9.0-gpu", "2.9"),
        ("tensorflow/tensorflow:2.9.1", "2.9"),
        ("registry.local:5000/tensorflow/tensorflow:2.10.0-gpu", "2.10"),
        ("tensorflow/tensorflow:latest-gpu", None),
    ],
)
def test_tensorflow_version_of_image(image: str, version: str | None) -> None:
    assert compat.tensorflow_version_of_image(image) == version


@pytest.mark.parametrize(
    ("python", "fits"), [("3.7.16", True), ("3.10.12", True), ("3.11.2", False), ("3.6.9", False)]
)
def test_python_range_for_tensorflow_2_9(python: str, fits: bool) -> None:
    assert compat.python_fits_tensorflow(python, "2.9") is fits
