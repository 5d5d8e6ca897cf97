"""
diagnosis.diagnose on a healthy host's evidence, then with one layer broken at a time by the real
outputs and error messages in tests/fixtures/tf/.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, cast

import pytest

from gpufleet.diagnosis import (
    Expectations,
    HostEvidence,
    HostVerdict,
    diagnose,
    parse_smoke_test_output,
)
from gpufleet.diagnosis.catalog import KNOWN_FAILURES, explain
from gpufleet.diagnosis.cuda import resolved_libraries
from gpufleet.diagnosis.hardware import gpus_on_pci_bus
from gpufleet.facts.nvidia import NVIDIA_SMI_EXIT_MARKER, parse_nvidia_smi_output
from gpufleet.facts.pci import parse_pci_devices

FIXTURES = Path(__file__).parents[1] / "fixtures" / "tf"
FACTS = Path(__file__).parents[1] / "fixtures" / "facts"

PINS = Expectations(
    driver_version="470.182.03",
    cuda_version="11.2",
    cudnn_version="8.1.1",
    expected_gpu_count=2,
)


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def fixture_line(name: str, containing: str) -> str:
    """The first line of a fixture holding `containing`, without a leading comment marker."""
    for line in fixture_text(name).splitlines():
        if containing in line:
            return line.lstrip("# ").rstrip()
    raise AssertionError(f"{containing!r} not in {name}")


def healthy() -> HostEvidence:
    evidence = json.loads(fixture_text("host-evidence-healthy-2xv100.json"))
    evidence["smoke_test"] = json.loads(fixture_text("smoke-test-2gpu-pass.synthetic.json"))
    return cast(HostEvidence, evidence)


def layer(verdict: HostVerdict, name: str) -> dict[str, Any]:
    return cast(dict[str, Any], next(item for item in verdict["layers"] if item["layer"] == name))


def failed_checks(verdict: HostVerdict, name: str) -> list[dict[str, Any]]:
    return [check for check in layer(verdict, name)["checks"] if check["passed"] is False]


def assert_broken_at(verdict: HostVerdict, name: str) -> None:
    assert verdict["state"] == "broken"
    assert verdict["broken_layer"] == name
    assert verdict["summary"].startswith(f"gpu-07: BROKEN at {name}: ")
    names = [item["layer"] for item in verdict["layers"]]
    for above in names[names.index(name) + 1 :]:
        assert layer(verdict, above) == {"layer": above, "state": "not reached", "checks": []}
    for below in names[: names.index(name)]:
        assert layer(verdict, below)["state"] == "ok"


def test_healthy_host_passes_every_layer() -> None:
    verdict = diagnose(healthy(), PINS)
    assert verdict["state"] == "ok"
    assert verdict["broken_layer"] is None
    assert [item["state"] for item in verdict["layers"]] == ["ok"] * 5
    assert all(check["passed"] for item in verdict["layers"] for check in item["checks"])
    assert verdict["summary"] == (
        "gpu-07: OK — 2x Tesla V100-SXM2-16GB, driver 470.182.03, cuDNN 8.1.1, TensorFlow 2.9.0"
    )
    json.dumps(verdict)  # the verdict goes into result files as is


def test_verdict_records_the_values_seen() -> None:
    checks = {
        check["name"]: check["evidence"]
        for item in diagnose(healthy(), PINS)["layers"]
        for check in item["checks"]
    }
    assert checks["driver version"] == "470.182.03"
    assert checks["driver supports CUDA 11.2"] == "CUDA 11.4"
    assert checks["ldconfig resolves libcudnn.so.8"] == "/usr/lib/x86_64-linux-gnu/libcudnn.so.8"
    assert checks["nvidia runtime registered"] == "runtimes: io.containerd.runc.v2, nvidia, runc"
    assert checks["matmul on GPU 1"].startswith("0.405 ms; max abs error")


# ---- hardware ------------------------------------------------------------------------------------


def test_pci_gpus_counted_from_real_lspci_output() -> None:
    evidence = healthy()
    evidence["pci_devices"] = parse_pci_devices(fixture_text("lspci-nn.txt").splitlines())
    # Quadro K2200, the 10de:2c58 dGPU, Tesla K80, A30; not the audio functions nor the Intel GPU.
    assert gpus_on_pci_bus(evidence) == 4


def test_hardware_broken_when_a_gpu_is_missing_from_the_bus() -> None:
    evidence = healthy()
    evidence["pci_devices"] = parse_pci_devices([fixture_line("lspci-nn.txt", "[10de:102d]")])
    verdict = diagnose(evidence, PINS)
    assert_broken_at(verdict, "hardware")
    assert failed_checks(verdict, "hardware")[0]["evidence"] == "1 (expected 2)"


def test_hardware_broken_on_a_host_without_gpus_the_sandbox_verdict() -> None:
    evidence = healthy()
    evidence["pci_devices"] = []
    verdict = diagnose(evidence, PINS)
    assert_broken_at(verdict, "hardware")
    assert failed_checks(verdict, "hardware")[0]["problem"] == (
        "0 NVIDIA GPU(s) on the PCI bus, expected 2"
    )


def test_hardware_unverified_when_the_bus_was_not_read_but_upper_layers_still_checked() -> None:
    evidence = healthy()
    evidence["pci_devices"] = None
    verdict = diagnose(evidence, PINS)
    assert verdict["state"] == "unverified"
    assert verdict["broken_layer"] is None
    assert layer(verdict, "hardware")["state"] == "unverified"
    assert layer(verdict, "framework")["state"] == "ok"
    assert verdict["summary"].startswith("gpu-07: UNVERIFIED at hardware: ")


# ---- driver --------------------------------------------------------------------------------------


def with_nvidia_smi(**changes: Any) -> HostEvidence:
    evidence = healthy()
    nvidia_smi = evidence["nvidia_smi"]
    assert nvidia_smi is not None
    evidence["nvidia_smi"] = cast(Any, {**nvidia_smi, **changes})
    return evidence


def test_driver_broken_when_nvidia_smi_is_missing() -> None:
    evidence = healthy()
    evidence["nvidia_smi"] = None
    verdict = diagnose(evidence, PINS)
    assert_broken_at(verdict, "driver")
    assert "install driver 470.182.03" in verdict["summary"]


@pytest.mark.parametrize(
    ("message", "cause", "fix"),
    [
        ("couldn't communicate with the NVIDIA driver", "kernel module is not loaded", "modprobe"),
        (
            "Failed to initialize NVML: Driver/library version mismatch",
            "without a reboot",
            "reboot",
        ),
    ],
)
def test_driver_broken_by_real_nvidia_smi_errors(message: str, cause: str, fix: str) -> None:
    error = fixture_line("nvidia-smi-errors.txt", message)
    verdict = diagnose(with_nvidia_smi(gpus=[], error=error, driver_version=None), PINS)
    assert_broken_at(verdict, "driver")
    [check] = failed_checks(verdict, "driver")
    assert check["evidence"] == error
    assert cause in check["problem"] and fix in check["fix"]


def test_a_gpu_the_driver_does_not_support_is_named_from_the_kernel_log() -> None:
    error = fixture_line("nvidia-smi-errors.txt", "couldn't communicate")
    evidence = with_nvidia_smi(gpus=[], error=error, driver_version=None)
    evidence["nvrm_messages"] = [
        line.strip()
        for line in (FACTS / "dmesg-nvrm-gpu-not-supported-535.txt").read_text().splitlines()
        if "NVRM:" in line
    ]
    [check] = failed_checks(diagnose(evidence, PINS), "driver")
    assert check["problem"] == (
        "driver 535.104.05 does not support the GPU 10de:1b38 at 0000:02:00.0"
    )
    assert check["fix"].startswith("pin a driver branch that drives this GPU")


# docker run --pull never without the image (balena-io/balena-cli#2159, the image's name
# changed to the fleet's).
NO_SUCH_IMAGE = (
    "docker: Error response from daemon: No such image: tensorflow/tensorflow:2.9.0-gpu.\n"
    "See 'docker run --help'."
)


def test_a_missing_image_is_its_own_cause_not_the_container_runtime() -> None:
    evidence = healthy()
    evidence["container_gpu_run"] = {
        "command": "docker run --rm --pull never --gpus all tensorflow/tensorflow:2.9.0-gpu",
        "exit_status": 125,
        "output": NO_SUCH_IMAGE,
    }
    [check] = failed_checks(diagnose(evidence, PINS), "container")
    assert check["problem"] == "image not available on the host: tensorflow/tensorflow:2.9.0-gpu"
    assert "tensorflow_image_archive_url" in check["fix"]


def test_the_real_nvidia_smi_of_ubuntus_535_server_without_its_module() -> None:
    output = (FACTS / "nvidia-smi-real-535-server-no-module.txt").read_text().splitlines()
    smi = parse_nvidia_smi_output([*output, f"{NVIDIA_SMI_EXIT_MARKER}9"])
    assert smi is not None and smi["error"] is not None
    [check] = failed_checks(
        diagnose(with_nvidia_smi(gpus=[], error=smi["error"], driver_version=None), PINS),
        "driver",
    )
    assert check["problem"] == "the NVIDIA kernel module is not loaded"


def test_no_devices_found_points_at_the_gpus_and_the_branch_not_a_reinstall() -> None:
    error = (FACTS / "nvidia-smi-no-devices.txt").read_text().strip()
    [check] = failed_checks(
        diagnose(with_nvidia_smi(gpus=[], error=error, driver_version=None), PINS), "driver"
    )
    assert check["problem"].startswith("the NVIDIA driver initialised no GPU")
    assert "reinstall" not in check["fix"]


@pytest.mark.parametrize(
    ("changes", "failing_check"),
    [
        ({"driver_version": "470.141.03"}, "driver version"),
        ({"cuda_version": "11.0"}, "driver supports CUDA 11.2"),
    ],
)
def test_driver_broken_by_wrong_versions(changes: dict[str, str], failing_check: str) -> None:
    evidence = with_nvidia_smi(**changes)
    evidence["nvidia_kernel"] = None
    verdict = diagnose(evidence, PINS)
    assert_broken_at(verdict, "driver")
    assert [check["name"] for check in failed_checks(verdict, "driver")] == [failing_check]


def test_driver_broken_when_loaded_module_differs_from_libraries() -> None:
    # dmesg in nvidia-smi-errors.txt: module 470.103.01 loaded, libraries 470.161.03 installed.
    evidence = with_nvidia_smi(driver_version="470.161.03")
    evidence["nvidia_kernel"] = {
        "loaded_driver_version": "470.103.01",
        "nouveau_loaded": False,
        "nvidia_modules": {"nvidia": 0},
    }
    verdict = diagnose(evidence, PINS)
    assert_broken_at(verdict, "driver")
    mismatch = next(
        check
        for check in failed_checks(verdict, "driver")
        if check["name"] == "loaded kernel module matches the libraries"
    )
    assert mismatch["evidence"] == "kernel module 470.103.01, libraries 470.161.03"
    assert mismatch["fix"].startswith("reboot the host")


def test_driver_broken_when_persistence_mode_is_off_or_a_gpu_is_lost() -> None:
    evidence = healthy()
    assert evidence["nvidia_smi"] is not None
    gpus = copy.deepcopy(evidence["nvidia_smi"]["gpus"])
    gpus[1]["persistence_mode"] = False
    verdict = diagnose(with_nvidia_smi(gpus=gpus), PINS)
    [check] = failed_checks(verdict, "driver")
    assert check["evidence"] == "off on GPU 1"
    verdict = diagnose(with_nvidia_smi(gpus=gpus[:1]), PINS)
    [check] = failed_checks(verdict, "driver")
    assert check["name"] == "driver sees every GPU"
    assert "Xid" in check["fix"]


# ---- cuda ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "failing_check"),
    [
        ({"cuda": {"toolkits": {}, "default_path": None}}, "CUDA 11.2 toolkit installed"),
        (
            {
                "cuda": {
                    "toolkits": {"11.2": {"path": "/usr/local/cuda-11.2", "nvcc_release": None}}
                }
            },
            "nvcc release",
        ),
        ({"cudnn_version": "8.9.7"}, "cuDNN 8.1.x"),
        ({"cudnn_version": None}, "cuDNN 8.1.x"),
    ],
)
def test_cuda_broken(changes: dict[str, Any], failing_check: str) -> None:
    verdict = diagnose(cast(HostEvidence, {**healthy(), **changes}), PINS)
    assert_broken_at(verdict, "cuda")
    assert [check["name"] for check in failed_checks(verdict, "cuda")] == [failing_check]


def test_cuda_accepts_another_cudnn_8_1_patch_release() -> None:
    # TensorFlow's own 2.9.0-gpu image ships cuDNN 8.1.0.77.
    verdict = diagnose(cast(HostEvidence, {**healthy(), "cudnn_version": "8.1.0"}), PINS)
    assert layer(verdict, "cuda")["state"] == "ok"


def test_cuda_libraries_resolved_from_real_ldconfig_output() -> None:
    libraries = resolved_libraries(fixture_text("ldconfig-p.txt").splitlines())
    assert libraries["libcudnn.so.8"] == "/usr/local/cuda/targets/x86_64-linux/lib/libcudnn.so.8"
    assert libraries["libcudart.so.11.0"].endswith("/libcudart.so.11.0")
    evidence = healthy()
    evidence["ldconfig"] = [
        line for line in fixture_text("ldconfig-p.txt").splitlines() if "cudnn" not in line
    ]
    verdict = diagnose(evidence, PINS)
    assert_broken_at(verdict, "cuda")
    [check] = failed_checks(verdict, "cuda")
    assert check["name"] == "ldconfig resolves libcudnn.so.8"
    assert "libcudnn8" in check["fix"]


# ---- container -----------------------------------------------------------------------------------


def runtimes_from_fixture(containing: str) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(fixture_line("docker-info-runtimes.txt", containing)))


def test_container_broken_without_the_nvidia_runtime() -> None:
    evidence = healthy()
    evidence["docker_info"] = {
        "server_version": "28.0.0-rc.1",
        # the real `{{json .Runtimes}}` line without the toolkit
        "runtimes": runtimes_from_fixture('{"io.containerd.runc.v2":{"path":"runc"},"runc"'),
        "default_runtime": "runc",
        "containers_running": 0,
        "live_restore": False,
    }
    verdict = diagnose(evidence, PINS)
    assert_broken_at(verdict, "container")
    assert verdict["summary"].startswith(
        "gpu-07: BROKEN at container: docker has no 'nvidia' runtime — install "
        "nvidia-container-toolkit and restart docker"
    )


def test_container_broken_when_docker_does_not_answer_or_default_differs() -> None:
    evidence = healthy()
    evidence["docker_info"] = None
    assert_broken_at(diagnose(evidence, PINS), "container")
    wants_nvidia = Expectations(**{**PINS.__dict__, "default_runtime": "nvidia"})
    verdict = diagnose(healthy(), wants_nvidia)
    [check] = failed_checks(verdict, "container")
    assert check["name"] == "default runtime" and check["evidence"] == "runc"


@pytest.mark.parametrize(
    ("message", "problem_words"),
    [
        ('could not select device driver "" with capabilities: [[gpu]]', "no NVIDIA device driver"),
        ("unknown or invalid runtime name: nvidia", "no 'nvidia' runtime"),
        ("nvidia-container-cli: requirement error", "needs a newer driver (cuda >= 9.0)"),
    ],
)
def test_container_run_failures_mapped_to_causes(message: str, problem_words: str) -> None:
    evidence = healthy()
    output = fixture_line("nvidia-smi-errors.txt", message)
    evidence["container_gpu_run"] = {"command": "docker run", "exit_status": 125, "output": output}
    verdict = diagnose(evidence, PINS)
    assert_broken_at(verdict, "container")
    [check] = failed_checks(verdict, "container")
    assert problem_words in check["problem"]
    assert check["evidence"] == output.strip()


def test_container_broken_when_it_sees_fewer_gpus_than_the_host() -> None:
    evidence = healthy()
    run = evidence["container_gpu_run"]
    assert run is not None
    run["output"] = run["output"].splitlines()[0]
    verdict = diagnose(evidence, PINS)
    [check] = failed_checks(verdict, "container")
    assert check["evidence"] == "1 of 2 host GPU UUIDs"
    assert "GPU-40c3447f-52d8-164f-978b-55998db3e6ad" in check["problem"]


def test_container_started_without_gpus_has_no_nvidia_smi() -> None:
    evidence = healthy()
    # the error line of nvidia-smi-errors.txt section 1, as sh prints it inside the container
    output = fixture_line("nvidia-smi-errors.txt", "nvidia-smi: not found")
    evidence["container_gpu_run"] = {"command": "docker run", "exit_status": 127, "output": output}
    [check] = failed_checks(diagnose(evidence, PINS), "container")
    assert "--gpus all" in check["fix"]


# ---- framework -----------------------------------------------------------------------------------


def with_smoke_test(**changes: Any) -> HostEvidence:
    evidence = healthy()
    evidence["smoke_test"] = {**(evidence["smoke_test"] or {}), **changes}
    return evidence


def test_framework_unverified_when_the_smoke_test_did_not_run() -> None:
    evidence = healthy()
    evidence["smoke_test"] = None
    verdict = diagnose(evidence, PINS)
    assert verdict["state"] == "unverified"
    assert (
        verdict["summary"]
        == "gpu-07: UNVERIFIED at framework: smoke test reported: smoke test not run"
    )


def test_framework_broken_on_a_cpu_only_tensorflow() -> None:
    evidence = healthy()
    evidence["smoke_test"] = json.loads(fixture_text("smoke-test-cpu-only-tf-2.15.1.json"))
    verdict = diagnose(evidence, PINS)
    assert_broken_at(verdict, "framework")
    [check] = failed_checks(verdict, "framework")
    assert check["evidence"] == "TensorFlow 2.15.1, is_built_with_cuda=False"
    assert "tensorflow/tensorflow:2.9.0-gpu" in check["fix"]


@pytest.mark.parametrize(
    ("fixture", "log_line", "problem_words"),
    [
        ("tf-gpu-list.txt", "'libcudnn.so.8'; dlerror", "cuDNN is missing (libcudnn.so.8"),
        ("tf-gpu-list.txt", "'libcudart.so.11.0'", "CUDA runtime libcudart.so.11.0 is missing"),
        ("tf-no-device.txt", "CUDA_ERROR_NO_DEVICE", "without --gpus all"),
    ],
)
def test_framework_no_gpu_explained_from_real_tensorflow_logs(
    fixture: str, log_line: str, problem_words: str
) -> None:
    line = fixture_line(fixture, log_line)
    evidence = with_smoke_test(gpus=[], checks=[], passed=False, error="TensorFlow sees no GPU")
    evidence["smoke_test_output"] = line
    verdict = diagnose(evidence, PINS)
    assert_broken_at(verdict, "framework")
    [check] = failed_checks(verdict, "framework")
    assert check["name"] == "TensorFlow sees every GPU"
    assert problem_words in check["problem"]


def test_framework_crash_before_the_report_is_explained() -> None:
    evidence = healthy()
    evidence["smoke_test"] = None
    evidence["smoke_test_output"] = fixture_line("tf-gpu-list.txt", "InternalError: cudaGetDevice")
    verdict = diagnose(evidence, PINS)
    assert_broken_at(verdict, "framework")
    [check] = failed_checks(verdict, "framework")
    assert check["problem"] == "the NVIDIA driver is too old for the CUDA runtime"
    assert "install driver 470.182.03" in check["fix"]


def test_framework_broken_by_a_wrong_gpu_result() -> None:
    report = json.loads(fixture_text("smoke-test-2gpu-pass.synthetic.json"))
    wrong = report["checks"][2]
    wrong.update(passed=False, detail="max abs error 2.5 vs numpy float64 (rtol=atol=0.001)")
    evidence = healthy()
    evidence["smoke_test"] = {**report, "passed": False}
    verdict = diagnose(evidence, PINS)
    assert_broken_at(verdict, "framework")
    [check] = failed_checks(verdict, "framework")
    assert check["name"] == "matmul on GPU 1"
    assert "wrong results" in check["problem"] and "Xid" in check["fix"]


def test_parse_smoke_test_output_takes_the_last_line() -> None:
    stdout = "noise\n" + fixture_text("smoke-test-cpu-only-tf-2.15.1.json")
    report = parse_smoke_test_output(stdout)
    assert report is not None and report["tensorflow_version"] == "2.15.1"
    assert parse_smoke_test_output("Traceback (most recent call last):\n") is None


def test_every_known_failure_is_reachable() -> None:
    # A pattern shadowed by an earlier, broader one would never explain anything.
    samples = [
        NO_SUCH_IMAGE,
        (FACTS / "dmesg-nvrm-gpu-not-supported-535.txt").read_text(),
        (FACTS / "nvidia-smi-no-devices.txt").read_text(),
        fixture_line("nvidia-smi-errors.txt", "Driver/library version mismatch"),
        fixture_line("nvidia-smi-errors.txt", "couldn't communicate"),
        fixture_line("nvidia-smi-errors.txt", "could not select device driver"),
        fixture_line("nvidia-smi-errors.txt", "unknown or invalid runtime name"),
        fixture_line("nvidia-smi-errors.txt", "requirement error"),
        fixture_line("tf-gpu-list.txt", "CUDA driver version is insufficient"),
        "Could not load dynamic library 'libcuda.so.1'",
        fixture_line("tf-gpu-list.txt", "'libcudart.so.11.0'"),
        fixture_line("tf-gpu-list.txt", "'libcudnn.so.8'"),
        fixture_line("tf-gpu-list.txt", "'libcusolver.so.11'"),
        fixture_line("tf-no-device.txt", "cuInit"),
        fixture_line("nvidia-smi-errors.txt", "nvidia-smi: not found"),
    ]
    explained = [explain(sample, PINS) for sample in samples]
    problems = [item[0] for item in explained if item]
    assert len(problems) == len(KNOWN_FAILURES) == len(set(problems))
