#!/usr/bin/env python3
"""TensorFlow GPU smoke test, copied to a GPU host by gpufleet and run there.

Runs with the host's or a container's python3 (3.7 to 3.11: TensorFlow 2.9 images ship 3.8),
using only the standard library, tensorflow and numpy. On every GPU TensorFlow lists it multiplies
two matrices and runs a convolution (cuDNN), comparing each result with numpy's float64 answer;
with two or more GPUs it also runs one MirroredStrategy training step. It never falls back to the
CPU: no GPU is a failure.

Human-readable lines go to stderr; the last line on stdout is one JSON object:
    {"tensorflow_version", "built_with_cuda", "python_version",
     "gpus": [{"index", "name", "compute_capability"}],
     "checks": [{"name", "gpu", "passed", "ms", "detail"}],
     "expected_gpus", "passed", "error"}
Exit status 0 only when every check passed on enough GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # typing.TypedDict is 3.8+; the script must still run on 3.7
    from collections.abc import Callable, Sequence
    from typing import TypedDict

    import numpy as np

    class GpuInfo(TypedDict):
        index: int
        name: str
        compute_capability: str | None

    class Check(TypedDict):
        name: str
        gpu: int | None
        passed: bool
        ms: float | None
        detail: str

    class Report(TypedDict):
        tensorflow_version: str | None
        built_with_cuda: bool | None
        python_version: str
        gpus: list[GpuInfo]
        checks: list[Check]
        expected_gpus: int
        passed: bool
        error: str | None


# Inputs are uniform in [0, 1): no cancellation, so every output element is large (matmul ~256,
# conv ~36) and its relative error stays ~1e-5 even with TF32 (Ampere+, on by default since
# TF 2.4, which rounds inputs to a 10-bit mantissa). rtol = atol = 1e-3 leaves >10x headroom for
# that, while a wrong kernel (transposed operand, stale buffer, garbage) is off by a percent or
# more.
DEFAULT_TOLERANCE = 1e-3
MATMUL_SIZE = 1024
CONV_INPUT_SHAPE = (8, 32, 32, 16)  # NHWC
CONV_KERNEL_SHAPE = (3, 3, 16, 32)  # HWIO
TIMED_RUNS = 10
LEARNING_RATE = 0.1
SEED = 2009

# TensorFlow's C++ log lines that say why it registered no GPU (real wording, TF 2.x).
NATIVE_LOG_COMPLAINT = re.compile(
    r"Could not load dynamic library '[^']+'"
    r"|CUDA driver version is insufficient for CUDA runtime version"
    r"|failed call to cuInit: \w+"
    r"|kernel driver does not appear to be running on this host[^\n]*"
)


def log(message: str) -> None:
    print(message, file=sys.stderr)


def call_capturing_native_stderr(function: Callable[[], Any]) -> tuple[Any, str]:
    """Calls function while file descriptor 2 goes to a temporary file, then replays that file.

    TensorFlow's C++ code logs to fd 2 directly, so sys.stderr cannot see its library-load failures.
    """
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile() as native_log:
        os.dup2(native_log.fileno(), 2)
        try:
            result = function()
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            native_log.seek(0)
            text = native_log.read().decode("utf-8", "replace")
            sys.stderr.write(text)
    return result, text


def native_log_complaints(text: str) -> list[str]:
    """Distinct complaints in TensorFlow's native log, in order of appearance."""
    complaints = []  # type: list[str]
    for match in NATIVE_LOG_COMPLAINT.finditer(text):
        if match.group(0) not in complaints:
            complaints.append(match.group(0))
    return complaints


def load_tensorflow_gpus() -> tuple[Any, list[Any], list[str]]:
    """Imports TensorFlow and lists its GPUs; returns the module, the GPUs, its log complaints."""
    # Level 1 hides INFO only: the WARNING and ERROR lines are the ones explaining a missing GPU.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"

    def load() -> tuple[Any, list[Any]]:
        import tensorflow as tf

        return tf, tf.config.list_physical_devices("GPU")

    (tf, gpus), native_log = call_capturing_native_stderr(load)
    return tf, gpus, native_log_complaints(native_log)


def gpu_inventory(gpus: Sequence[Any]) -> list[GpuInfo]:
    import tensorflow as tf

    inventory = []  # type: list[GpuInfo]
    for index, gpu in enumerate(gpus):
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        inventory.append(
            {
                "index": index,
                "name": details.get("device_name", gpu.name),
                "compute_capability": f"{capability[0]}.{capability[1]}" if capability else None,
            }
        )
    return inventory


def gpu_index(device: str) -> int | None:
    match = re.search(r"GPU:(\d+)$", device, re.IGNORECASE)
    return int(match.group(1)) if match else None


def ran_on(device: str, placed: str) -> bool:
    """Whether a tensor placed on `placed` (a full device name) is on the requested `device`."""
    import tensorflow as tf

    wanted = tf.DeviceSpec.from_string(device)
    actual = tf.DeviceSpec.from_string(placed)
    return (wanted.device_type, wanted.device_index) == (actual.device_type, actual.device_index)


def random_inputs(*shapes: Sequence[int]) -> list[np.ndarray]:
    import numpy as np

    generator = np.random.default_rng(SEED)
    return [generator.random(shape, dtype=np.float32) for shape in shapes]


def matmul_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import numpy as np

    return np.matmul(a.astype(np.float64), b.astype(np.float64))


def conv2d_reference(images: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """VALID, stride-1 NHWC convolution (cross-correlation, as tf.nn.conv2d) in float64."""
    import numpy as np

    kernel_height, kernel_width = kernel.shape[:2]
    out_height = images.shape[1] - kernel_height + 1
    out_width = images.shape[2] - kernel_width + 1
    result = np.zeros((images.shape[0], out_height, out_width, kernel.shape[3]))
    for row in range(kernel_height):
        for column in range(kernel_width):
            window = images[:, row : row + out_height, column : column + out_width, :]
            result += np.tensordot(window.astype(np.float64), kernel[row, column], axes=([3], [0]))
    return result


def compare(result: np.ndarray, reference: np.ndarray, tolerance: float) -> tuple[bool, str]:
    import numpy as np

    if result.shape != reference.shape:
        return False, f"shape {result.shape}, expected {reference.shape}"
    error = float(np.max(np.abs(result.astype(np.float64) - reference)))
    passed = bool(np.allclose(result, reference, rtol=tolerance, atol=tolerance))
    return passed, f"max abs error {error:.3g} vs numpy float64 (rtol=atol={tolerance:g})"


def failed_check(name: str, gpu: int | None, error: Exception) -> Check:
    first_line = str(error).strip().split("\n")[0]
    detail = f"{type(error).__name__}: {first_line}"
    return {"name": name, "gpu": gpu, "passed": False, "ms": None, "detail": detail[:500]}


def check_op(
    name: str, device: str, op: Callable[[], Any], reference: np.ndarray, tolerance: float
) -> Check:
    """Runs op under `device` once to warm up (kernel choice, allocation), then TIMED_RUNS times.

    Fails when the result is on another device (TensorFlow's soft placement falls back to the CPU
    silently) or differs from the reference.
    """
    import tensorflow as tf

    gpu = gpu_index(device)
    try:
        with tf.device(device):
            op().numpy()
            start = time.perf_counter()
            for _ in range(TIMED_RUNS):
                result = op()
            # Ops on one device run in order: fetching the last result waits for all of them.
            value = result.numpy()
            ms = (time.perf_counter() - start) * 1000.0 / TIMED_RUNS
    except Exception as error:  # any TF error (cuDNN, driver) is this check's failure, not a crash
        return failed_check(name, gpu, error)
    if not ran_on(device, result.device):
        return {
            "name": name,
            "gpu": gpu,
            "passed": False,
            "ms": ms,
            "detail": f"ran on {result.device}, not {device}",
        }
    passed, detail = compare(value, reference, tolerance)
    return {"name": name, "gpu": gpu, "passed": passed, "ms": round(ms, 3), "detail": detail}


def check_matmul(
    device: str, a: np.ndarray, b: np.ndarray, reference: np.ndarray, tolerance: float
) -> Check:
    import tensorflow as tf

    with tf.device(device):
        a_on_device, b_on_device = tf.constant(a), tf.constant(b)
    return check_op(
        "matmul", device, lambda: tf.matmul(a_on_device, b_on_device), reference, tolerance
    )


def check_conv2d(
    device: str, images: np.ndarray, kernel: np.ndarray, reference: np.ndarray, tolerance: float
) -> Check:
    import tensorflow as tf

    with tf.device(device):
        images_on_device, kernel_on_device = tf.constant(images), tf.constant(kernel)
    return check_op(
        "conv2d",
        device,
        lambda: tf.nn.conv2d(images_on_device, kernel_on_device, strides=1, padding="VALID"),
        reference,
        tolerance,
    )


def mirrored_step_reference(
    weights: np.ndarray, batches: Sequence[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Weights after one SGD step on the mean squared error, gradients averaged over replicas."""
    import numpy as np

    weights64 = weights.astype(np.float64)
    gradients = [
        2.0 * x.T.astype(np.float64) @ (x.astype(np.float64) @ weights64 - y) / y.size
        for x, y in batches
    ]
    return weights64 - LEARNING_RATE * np.mean(gradients, axis=0)


def check_mirrored_step(
    devices: Sequence[str],
    weights: np.ndarray,
    batches: Sequence[tuple[np.ndarray, np.ndarray]],
    reference: np.ndarray,
    tolerance: float,
) -> Check:
    """One MirroredStrategy step, each replica on its own batch; every replica's weights must equal
    the reference, which only holds when the gradients were all-reduced across devices."""
    import tensorflow as tf

    name = "mirrored_strategy_step"
    try:
        strategy = tf.distribute.MirroredStrategy(devices=list(devices))
        with strategy.scope():
            variable = tf.Variable(weights, aggregation=tf.VariableAggregation.MEAN)

        def per_replica(values: Sequence[np.ndarray]) -> Any:
            return strategy.experimental_distribute_values_from_function(
                lambda context: tf.constant(values[context.replica_id_in_sync_group])
            )

        batch = (per_replica([x for x, _ in batches]), per_replica([y for _, y in batches]))

        def replica_step(x: Any, y: Any) -> None:
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(tf.matmul(x, variable) - y))
            variable.assign_sub(LEARNING_RATE * tape.gradient(loss, variable))

        @tf.function
        def step() -> None:
            strategy.run(replica_step, args=batch)

        step()  # warm-up: tracing and collective set-up
        variable.assign(weights)
        start = time.perf_counter()
        step()
        replicas = strategy.experimental_local_results(variable)
        values = [replica.numpy() for replica in replicas]
        ms = (time.perf_counter() - start) * 1000.0
    except Exception as error:  # any TF error (NCCL, driver) is this check's failure, not a crash
        return failed_check(name, None, error)
    placed = [replica.device for replica in replicas]
    if len(placed) != len(devices) or not all(map(ran_on, devices, placed)):
        detail = f"replicas on {placed}, expected {list(devices)}"
        return {"name": name, "gpu": None, "passed": False, "ms": ms, "detail": detail}
    outcomes = [compare(value, reference, tolerance) for value in values]
    wrong = [str(i) for i, (passed, _) in enumerate(outcomes) if not passed]
    detail = f"{len(values)} replicas; {outcomes[0][1]}"
    if wrong:
        details = "; ".join(outcome[1] for outcome in outcomes)
        detail = f"replica(s) {', '.join(wrong)} disagree with the all-reduced update; {details}"
    return {"name": name, "gpu": None, "passed": not wrong, "ms": round(ms, 3), "detail": detail}


def new_report(expected_gpus: int) -> Report:
    return {
        "tensorflow_version": None,
        "built_with_cuda": None,
        "python_version": platform.python_version(),
        "gpus": [],
        "checks": [],
        "expected_gpus": expected_gpus,
        "passed": False,
        "error": None,
    }


def no_gpu_error(built_with_cuda: bool, complaints: Sequence[str]) -> str:
    if not built_with_cuda:
        return (
            "TensorFlow sees no GPU: this is a CPU-only build (is_built_with_cuda=False); "
            "use a GPU build such as the tensorflow/tensorflow:2.9.0-gpu image"
        )
    if complaints:
        return (
            "TensorFlow sees no GPU: CUDA build (is_built_with_cuda=True), GPU setup failed: "
            + "; ".join(complaints)
        )
    return (
        "TensorFlow sees no GPU: CUDA build (is_built_with_cuda=True) but no GPU registered and no "
        "CUDA library error logged (no GPU passed to this container? missing --gpus all)"
    )


def run_checks(gpus: Sequence[GpuInfo], tolerance: float) -> list[Check]:
    a, b = random_inputs((MATMUL_SIZE, MATMUL_SIZE), (MATMUL_SIZE, MATMUL_SIZE))
    images, kernel = random_inputs(CONV_INPUT_SHAPE, CONV_KERNEL_SHAPE)
    product, convolution = matmul_reference(a, b), conv2d_reference(images, kernel)
    devices = [f"/GPU:{gpu['index']}" for gpu in gpus]
    checks = []  # type: list[Check]
    for device in devices:
        checks.append(check_matmul(device, a, b, product, tolerance))
        checks.append(check_conv2d(device, images, kernel, convolution, tolerance))
    if len(devices) >= 2:
        weights, *arrays = random_inputs((8, 1), *[(16, 8), (16, 1)] * len(devices))
        batches = list(zip(arrays[::2], arrays[1::2]))  # noqa: B905 (strict= is 3.10+)
        reference = mirrored_step_reference(weights, batches)
        checks.append(check_mirrored_step(devices, weights, batches, reference, tolerance))
    return checks


def run_smoke_test(expected_gpus: int, tolerance: float) -> Report:
    report = new_report(expected_gpus)
    try:
        tf, gpus, complaints = load_tensorflow_gpus()
    except ImportError as error:
        report["error"] = f"cannot import tensorflow: {error}"
        return report
    report["tensorflow_version"] = tf.__version__
    built_with_cuda = bool(tf.test.is_built_with_cuda())
    report["built_with_cuda"] = built_with_cuda
    shortfall = f"expected {expected_gpus}, saw {len(gpus)}" if len(gpus) < expected_gpus else None
    if not gpus:
        reason = no_gpu_error(built_with_cuda, complaints)
        report["error"] = f"{reason} ({shortfall})" if shortfall else reason
        return report
    for gpu in gpus:
        # Take memory as needed instead of all of it: the host may be running other jobs.
        tf.config.experimental.set_memory_growth(gpu, True)
    # Without soft placement an op that cannot run on the GPU raises instead of moving to the CPU.
    tf.config.set_soft_device_placement(False)
    report["gpus"] = gpu_inventory(gpus)
    report["checks"] = run_checks(report["gpus"], tolerance)
    problems = [shortfall] if shortfall else []
    for check in report["checks"]:
        if not check["passed"]:
            problems.append(f"{check['name']} on {where(check)} failed: {check['detail']}")
    report["error"] = "; ".join(problems) if problems else None
    report["passed"] = not problems
    return report


def where(check: Check) -> str:
    return "all GPUs" if check["gpu"] is None else f"GPU {check['gpu']}"


def log_report(report: Report) -> None:
    log(f"python {report['python_version']}")
    log(f"tensorflow {report['tensorflow_version']} (built with CUDA: {report['built_with_cuda']})")
    for gpu in report["gpus"]:
        log(f"GPU {gpu['index']}: {gpu['name']} (compute capability {gpu['compute_capability']})")
    for check in report["checks"]:
        timing = "" if check["ms"] is None else f" {check['ms']:.3f} ms"
        verdict = "PASS" if check["passed"] else "FAIL"
        log(f"{verdict} {check['name']} on {where(check)}{timing}: {check['detail']}")
    log("PASSED" if report["passed"] else f"FAILED: {report['error']}")


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--expected-gpus",
        type=int,
        default=0,
        help="GPUs TensorFlow must see (default 0: at least one)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="rtol and atol against numpy's float64 results (default %(default)g)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    report = run_smoke_test(arguments.expected_gpus, arguments.tolerance)
    log_report(report)
    print(json.dumps(report, sort_keys=True))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
