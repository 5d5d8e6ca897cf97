"""
tf_smoke_test.py under a real TensorFlow (tensorflow-cpu from PyPI): the script as a user runs it
on a machine without a GPU, and its comparison logic run on CPU devices.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

tf = pytest.importorskip(
    "tensorflow", reason="needs TensorFlow: pip install tensorflow-cpu==2.15.1 (see README)"
)
np = pytest.importorskip("numpy")

SCRIPT = Path(__file__).parents[2] / "gpufleet" / "remote" / "tf_smoke_test.py"
FIXTURES = Path(__file__).parents[1] / "fixtures" / "tf"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tf_smoke_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


smoke = load_script()


@pytest.fixture(scope="module", autouse=True)
def two_cpu_devices() -> None:
    """Split the CPU into /CPU:0 and /CPU:1 so MirroredStrategy gets two real replicas.

    Must happen before TensorFlow creates its runtime, i.e. before the first op of this process.
    """
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )


def run_script(*arguments: str, python: list[str] | None = None) -> tuple[int, dict[str, Any]]:
    completed = subprocess.run(
        [*(python or [sys.executable]), str(SCRIPT), *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    last_line = completed.stdout.strip().splitlines()[-1]
    return completed.returncode, json.loads(last_line)


def test_script_fails_without_a_gpu_and_says_why() -> None:
    returncode, report = run_script()
    assert returncode != 0
    assert report["passed"] is False
    assert report["tensorflow_version"] == tf.__version__
    assert report["built_with_cuda"] is False  # tensorflow-cpu is a CPU-only build
    assert report["gpus"] == [] and report["checks"] == []
    assert report["error"].startswith("TensorFlow sees no GPU")
    assert "is_built_with_cuda=False" in report["error"]
    assert set(report) == set(smoke.new_report(0))


def test_script_reports_expected_gpu_shortfall() -> None:
    returncode, report = run_script("--expected-gpus", "2")
    assert returncode != 0
    assert report["expected_gpus"] == 2
    assert "expected 2, saw 0" in report["error"]


def test_script_reports_missing_tensorflow() -> None:
    # -S leaves site-packages off the path: a real interpreter without TensorFlow (and numpy).
    returncode, report = run_script(python=[sys.executable, "-S"])
    assert returncode != 0
    assert report["tensorflow_version"] is None
    assert report["error"].startswith("cannot import tensorflow")


def test_no_gpu_error_tells_cpu_build_from_cuda_build() -> None:
    assert "CPU-only build" in smoke.no_gpu_error(False, [])
    complaints = ["Could not load dynamic library 'libcudnn.so.8'"]
    assert "libcudnn.so.8" in smoke.no_gpu_error(True, complaints)
    assert "--gpus all" in smoke.no_gpu_error(True, [])


def test_native_log_complaints_from_real_tensorflow_logs() -> None:
    text = (FIXTURES / "tf-gpu-list.txt").read_text() + (FIXTURES / "tf-no-device.txt").read_text()
    complaints = smoke.native_log_complaints(text)
    assert "Could not load dynamic library 'libcudnn.so.8'" in complaints
    assert "Could not load dynamic library 'libcudart.so.11.0'" in complaints
    assert "CUDA driver version is insufficient for CUDA runtime version" in complaints
    assert "failed call to cuInit: CUDA_ERROR_NO_DEVICE" in complaints
    assert len(complaints) == len(set(complaints))


def test_native_stderr_is_captured_and_replayed(capfd: pytest.CaptureFixture[str]) -> None:
    def write_natively() -> int:
        os.write(2, b"W dso_loader.cc:64] Could not load dynamic library 'libcudnn.so.8'\n")
        return 7

    result, text = smoke.call_capturing_native_stderr(write_natively)
    assert result == 7
    assert "libcudnn.so.8" in text
    assert "libcudnn.so.8" in capfd.readouterr().err


def matmul_inputs() -> tuple[Any, Any, Any]:
    a, b = smoke.random_inputs((smoke.MATMUL_SIZE,) * 2, (smoke.MATMUL_SIZE,) * 2)
    return a, b, smoke.matmul_reference(a, b)


def test_matmul_check_passes_on_correct_result() -> None:
    a, b, reference = matmul_inputs()
    check = smoke.check_matmul("/CPU:0", a, b, reference, smoke.DEFAULT_TOLERANCE)
    assert check["passed"], check
    assert check["name"] == "matmul" and check["gpu"] is None
    assert check["ms"] > 0


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda a, b, r: r * 1.01, id="one-percent-off"),
        pytest.param(lambda a, b, r: smoke.matmul_reference(a, b.T), id="transposed-operand"),
        pytest.param(lambda a, b, r: np.where(np.eye(len(r)) > 0, r + 1.0, r), id="diagonal"),
    ],
)
def test_matmul_check_detects_wrong_result(corrupt: Any) -> None:
    a, b, reference = matmul_inputs()
    check = smoke.check_matmul("/CPU:0", a, b, corrupt(a, b, reference), smoke.DEFAULT_TOLERANCE)
    assert not check["passed"]
    assert "max abs error" in check["detail"]


def conv_inputs() -> tuple[Any, Any, Any]:
    images, kernel = smoke.random_inputs(smoke.CONV_INPUT_SHAPE, smoke.CONV_KERNEL_SHAPE)
    return images, kernel, smoke.conv2d_reference(images, kernel)


def test_conv2d_reference_matches_tensorflow_and_check_passes() -> None:
    images, kernel, reference = conv_inputs()
    check = smoke.check_conv2d("/CPU:0", images, kernel, reference, smoke.DEFAULT_TOLERANCE)
    assert check["passed"], check
    assert reference.shape == (8, 30, 30, 32)


def test_conv2d_check_detects_wrong_result() -> None:
    images, kernel, reference = conv_inputs()
    perturbed = reference.copy()
    perturbed[3, 10, 10, 5] += 0.5
    check = smoke.check_conv2d("/CPU:0", images, kernel, perturbed, smoke.DEFAULT_TOLERANCE)
    assert not check["passed"]
    flipped = smoke.conv2d_reference(images, kernel[::-1, ::-1])  # convolution, not correlation
    check = smoke.check_conv2d("/CPU:0", images, kernel, flipped, smoke.DEFAULT_TOLERANCE)
    assert not check["passed"]


def test_check_fails_when_tensorflow_falls_back_to_the_cpu() -> None:
    # No GPU here: with soft placement (TensorFlow's default) the op silently runs on the CPU.
    a, b, reference = matmul_inputs()
    check = smoke.check_matmul("/GPU:0", a, b, reference, smoke.DEFAULT_TOLERANCE)
    assert not check["passed"]
    assert check["gpu"] == 0
    assert "CPU:0" in check["detail"]


def mirrored_inputs() -> tuple[Any, list[tuple[Any, Any]]]:
    weights, x0, y0, x1, y1 = smoke.random_inputs((8, 1), (16, 8), (16, 1), (16, 8), (16, 1))
    return weights, [(x0, y0), (x1, y1)]


def test_mirrored_step_on_two_replicas_matches_all_reduced_update() -> None:
    weights, batches = mirrored_inputs()
    reference = smoke.mirrored_step_reference(weights, batches)
    check = smoke.check_mirrored_step(
        ["/CPU:0", "/CPU:1"], weights, batches, reference, smoke.DEFAULT_TOLERANCE
    )
    assert check["passed"], check
    assert check["detail"].startswith("2 replicas")


def test_mirrored_step_detects_replicas_without_all_reduce() -> None:
    weights, batches = mirrored_inputs()
    # What replica 0 would hold had it applied only its own gradient.
    local_only = smoke.mirrored_step_reference(weights, batches[:1])
    check = smoke.check_mirrored_step(
        ["/CPU:0", "/CPU:1"], weights, batches, local_only, smoke.DEFAULT_TOLERANCE
    )
    assert not check["passed"]
    assert "disagree" in check["detail"]


def test_synthetic_passing_fixture_has_the_scripts_shape() -> None:
    # diagnosis and report tests use this hand-written report: it must match what the script emits.
    report = json.loads((FIXTURES / "smoke-test-2gpu-pass.synthetic.json").read_text())
    assert set(report) == set(smoke.new_report(0))
    a, b, reference = matmul_inputs()
    check = smoke.check_matmul("/CPU:0", a, b, reference, smoke.DEFAULT_TOLERANCE)
    assert all(set(fixture_check) == set(check) for fixture_check in report["checks"])


def test_script_parses_as_python_3_7() -> None:
    # TensorFlow 2.9 images run Python 3.8 and older hosts 3.7: no newer syntax in this file.
    ast.parse(SCRIPT.read_text(), feature_version=(3, 7))


def test_two_gpus_get_the_mirrored_strategy_step() -> None:
    gpus = [
        {"index": 0, "name": "stand-in", "compute_capability": None},
        {"index": 1, "name": "stand-in", "compute_capability": None},
    ]
    # No GPU here, so every check fails; which checks run is the point.
    checks = smoke.run_checks(gpus, smoke.DEFAULT_TOLERANCE)
    assert [(check["name"], check["gpu"]) for check in checks] == [
        ("matmul", 0),
        ("conv2d", 0),
        ("matmul", 1),
        ("conv2d", 1),
        ("mirrored_strategy_step", None),
    ]


def test_one_gpu_of_two_expected_fails_even_when_its_checks_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    passing = {"name": "matmul", "gpu": 0, "passed": True, "detail": "max error 0"}
    monkeypatch.setattr(smoke, "load_tensorflow_gpus", lambda: (tf, ["GPU:0"], []))
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", lambda gpu, grow: None)
    monkeypatch.setattr(smoke, "gpu_inventory", lambda gpus: [{"index": 0}])
    monkeypatch.setattr(smoke, "run_checks", lambda gpus, tolerance: [passing])
    report = smoke.run_smoke_test(2, smoke.DEFAULT_TOLERANCE)
    assert (report["passed"], report["error"]) == (False, "expected 2, saw 1")
