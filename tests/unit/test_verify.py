"""
Verification from gathered evidence to verdict and result file: the evidence fact's sections in
the formats the real tools print, one layer at a time broken by a real failing output.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api.exceptions import PyinfraError

from gpufleet.deploys.verify import (
    HOST_TENSORFLOW_PYTHON,
    HOST_TENSORFLOW_VENV,
    coverage_record,
    expectations_for,
    host_evidence,
    host_python_problem,
    result_document,
    result_path,
    verify,
    write_result,
)
from gpufleet.diagnosis import Expectations, HostVerdict, diagnose
from gpufleet.facts.gpu_host import SECTION_MARKER
from gpufleet.facts.nvidia import NVIDIA_SMI_EXIT_MARKER
from gpufleet.facts.verify import (
    EXIT_MARKER,
    HEREDOC_DELIMITER,
    RUN_MARKER,
    SMOKE_TEST_SCRIPT,
    VerificationEvidence,
    command_run_script,
    container_gpus_command,
    parse_command_run,
    smoke_test_command,
)
from gpufleet.fleet_report import load_rows
from gpufleet.settings import SettingsError, read_settings
from gpufleet.stack.hardware import PciDevice
from tests.fakehost import (
    FIXTURE_KEY_DATA,
    bare_debian_12,
    bare_ubuntu_2004,
    converged_ubuntu_2004,
    plan,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
T4_UUID = "GPU-d37e67a5-91dd-3774-a5cb-99096249601a"
IMAGE = "tensorflow/tensorflow:2.9.0-gpu"
# The pins of the real Tesla T4 sample (driver 515.105.01, CUDA 11.7 supported) below.
PINS = Expectations(
    driver_version="515.105.01",
    cuda_version="11.2",
    cudnn_version="8.1.1",
    expected_gpu_count=1,
    default_runtime="nvidia",
    tensorflow_image=IMAGE,
)


def fixture_lines(name: str) -> list[str]:
    """A fixture's lines without its comment lines ("# ..."; "#define" is content)."""
    text = (FIXTURES / name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if not line.startswith("# ")]


def fixture_line(name: str, containing: str) -> str:
    return next(line for line in fixture_lines(name) if containing in line)


def command_run(command: str, output: list[str], exit_status: int) -> list[str]:
    return [RUN_MARKER + command, *output, f"{EXIT_MARKER}{exit_status}"]


def healthy_sections() -> dict[str, list[str]]:
    """What VerificationEvidence's command prints on a healthy one-T4 host, section by section."""
    # The real T4 sample has persistence mode off; a healthy gpufleet host has it on.
    t4_xml = [
        line.replace("<persistence_mode>Disabled<", "<persistence_mode>Enabled<")
        for line in fixture_lines("facts/nvidia-smi-q-x-tesla-t4-515.105.01.xml")
    ]
    docker_info = json.loads(
        fixture_lines("facts/docker-info-json-desktop-28.2.2-fragment.json")[0]
    )
    docker_info["DefaultRuntime"] = "nvidia"
    nvcc = fixture_line("facts/nvcc-version-11.2.txt", "Cuda compilation tools")
    smoke_test = fixture_lines("tf/smoke-test-2gpu-pass.synthetic.json")
    return {
        "os_release": fixture_lines("os-release/ubuntu-20.04.6.txt"),
        "pci_devices": [fixture_line("tf/lspci-nn.txt", "[10de:20b7]")],
        "nvidia_smi": [*t4_xml, f"{NVIDIA_SMI_EXIT_MARKER}0"],
        "cuda": [f"toolkit\t/usr/local/cuda-11.2\t{nvcc}", "default\t/usr/local/cuda-11.2"],
        "cudnn_version": fixture_lines("facts/cudnn_version-8.1.1-grep.txt"),
        "ldconfig": fixture_lines("tf/ldconfig-p.txt"),
        "docker_info": [json.dumps(docker_info)],
        "container_gpu_run": command_run(
            container_gpus_command(IMAGE), [f"GPU 0: Tesla T4 (UUID: {T4_UUID})"], 0
        ),
        "smoke_test_run": command_run("python3 - --expected-gpus 1", smoke_test, 0),
    }


def verdict_for(sections: dict[str, list[str]], pins: Expectations = PINS) -> HostVerdict:
    lines = [line for name, output in sections.items() for line in [SECTION_MARKER + name, *output]]
    gathered = VerificationEvidence().process(lines)
    return diagnose(host_evidence("gpu-01", gathered), pins)


def states(verdict: HostVerdict) -> list[str]:
    return [layer["state"] for layer in verdict["layers"]]


def test_healthy_host_passes_every_layer() -> None:
    verdict = verdict_for(healthy_sections())
    assert states(verdict) == ["ok"] * 5
    assert verdict["summary"] == (
        "gpu-01: OK — 1x Tesla T4, driver 515.105.01, cuDNN 8.1.1, TensorFlow 2.9.0"
    )


@pytest.mark.parametrize(
    ("section", "output", "broken_layer", "summary"),
    [
        (
            "pci_devices",
            [fixture_line("tf/lspci-nn.txt", "Intel Corporation Arrow Lake-U")],
            "hardware",
            "0 NVIDIA GPU(s) on the PCI bus, expected 1",
        ),
        (
            "nvidia_smi",
            [
                *fixture_lines("facts/nvidia-smi-error-nvml-mismatch.txt"),
                f"{NVIDIA_SMI_EXIT_MARKER}18",
            ],
            "driver",
            "the loaded NVIDIA kernel module and the user-space libraries differ",
        ),
        (
            "cudnn_version",
            fixture_lines("facts/cudnn_version-9.5.0-grep.txt"),
            "cuda",
            "cuDNN 9.5.0 instead of 8.1.1",
        ),
        (
            "docker_info",
            fixture_lines("facts/docker-info-json-daemon-down.txt"),
            "container",
            "docker is not installed or its daemon is not running",
        ),
        (
            "smoke_test_run",
            command_run(
                "python3 - --expected-gpus 1",
                fixture_lines("tf/smoke-test-cpu-only-tf-2.15.1.json"),
                1,
            ),
            "framework",
            "this TensorFlow is a CPU-only build",
        ),
    ],
)
def test_each_layer_fails_on_its_real_failure_output(
    section: str, output: list[str], broken_layer: str, summary: str
) -> None:
    verdict = verdict_for({**healthy_sections(), section: output})
    assert verdict["broken_layer"] == broken_layer
    assert verdict["summary"].startswith(f"gpu-01: BROKEN at {broken_layer}: {summary}")
    position = [layer["layer"] for layer in verdict["layers"]].index(broken_layer)
    assert states(verdict)[:position] == ["ok"] * position
    assert states(verdict)[position + 1 :] == ["not reached"] * (4 - position)


def test_a_wrong_cudnn_is_fixed_by_installing_the_whole_pinned_version() -> None:
    pins = replace(
        PINS, cudnn_version=expectations_for(read_settings({}), "535.183.01").cudnn_version
    )
    cudnn_9 = fixture_lines("facts/cudnn_version-9.5.0-grep.txt")
    verdict = verdict_for({**healthy_sections(), "cudnn_version": cudnn_9}, pins)
    assert verdict["summary"].startswith("gpu-01: BROKEN at cuda: cuDNN 9.5.0 instead of 8.1.1.33")
    assert "install libcudnn8 and libcudnn8-dev 8.1.1.33 for CUDA 11.2" in verdict["summary"]


def test_a_host_without_pciutils_is_counted_from_sysfs_and_has_no_gpu_here() -> None:
    # The PCI fact reads sysfs where lspci is missing: no NVIDIA device is an honest "none".
    verdict = verdict_for({**healthy_sections(), "pci_devices": []})
    assert verdict["broken_layer"] == "hardware"
    assert verdict["summary"].startswith(
        "gpu-01: BROKEN at hardware: 0 NVIDIA GPU(s) on the PCI bus, expected 1"
    )


def test_without_the_smoke_test_a_missing_image_leaves_the_container_check_unverified() -> None:
    # A driver upgrade's verification: the container check ran only if the image was there.
    sections = healthy_sections()
    del sections["container_gpu_run"], sections["smoke_test_run"]
    verdict = verdict_for(sections)
    assert states(verdict)[:3] == ["ok", "ok", "ok"]
    container = verdict["layers"][3]
    assert container["state"] == "unverified"
    assert container["checks"][-1]["evidence"] == (
        "no container was run: tensorflow/tensorflow:2.9.0-gpu is not on the host (needed only "
        "for the smoke test)"
    )


def run_sh(script: str) -> list[str]:
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def test_command_run_merges_stderr_keeps_the_exit_status_and_feeds_stdin() -> None:
    command = "cat; echo complaint >&2; exit 3"
    run = parse_command_run(run_sh(command_run_script(command, stdin="one\n'two' $HOME")))
    assert run is not None and run.pop("seconds") is not None
    assert run == {"command": command, "exit_status": 3, "output": "one\n'two' $HOME\ncomplaint"}
    with pytest.raises(ValueError, match=HEREDOC_DELIMITER):
        command_run_script("cat", stdin=f"x\n{HEREDOC_DELIMITER}\ny")


def test_the_smoke_test_script_runs_from_stdin_and_reports() -> None:
    # This machine's python3 has no TensorFlow: the script still reports, as its last JSON line.
    script = command_run_script(
        smoke_test_command(["python3"], 2), stdin=SMOKE_TEST_SCRIPT.read_text()
    )
    run = parse_command_run(run_sh(script))
    assert run is not None and run["exit_status"] == 1
    gathered = VerificationEvidence().process([SECTION_MARKER + "smoke_test_run", *run_sh(script)])
    report = host_evidence("gpu-01", gathered)["smoke_test"]
    assert report is not None
    assert report["expected_gpus"] == 2
    assert report["error"].startswith("cannot import tensorflow")


def test_result_file_feeds_the_fleet_report(tmp_path: Path) -> None:
    sections = healthy_sections()
    lines = [line for name, output in sections.items() for line in [SECTION_MARKER + name, *output]]
    gathered = VerificationEvidence().process(lines)
    evidence = host_evidence("root@10.0.0.7", gathered)
    path = result_path(str(tmp_path / "results"), "root@10.0.0.7")
    assert path.name == "root@10.0.0.7.json"
    write_result(
        path,
        result_document(
            "root@10.0.0.7",
            gathered,
            evidence,
            diagnose(evidence, PINS),
            "tensorflow/tensorflow:2.9.0-gpu",
        ),
    )
    (row,) = load_rows(path.parent, PINS)
    assert row.state == "ok" and row.drift == frozenset()
    assert row.cells["os"] == "Ubuntu 20.04.6 LTS"
    assert row.cells["gpus"] == "1x Tesla T4"
    assert row.cells["runtime"] == "default nvidia, nvidia registered"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"gpu_verify": "yes"}, "gpu_verify = 'yes' must be true or false"),
        ({"gpu_expected_count": 0}, "gpu_expected_count = 0 must be a whole number of GPUs"),
        ({"gpu_expected_count": "8"}, "gpu_expected_count = '8' must be a whole number of GPUs"),
        ({"gpu_results_dir": ""}, "gpu_results_dir = '' must be a string"),
    ],
)
def test_verification_settings_are_checked(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(SettingsError, match=problem.replace("(", r"\(")):
        read_settings(data)


def test_verification_settings_defaults() -> None:
    settings = read_settings({"gpu_expected_count": 8})
    assert settings.gpu_expected_count == 8
    assert (settings.gpu_verify, settings.gpu_smoke_test, settings.tensorflow_host_test) == (
        True,
        True,
        False,
    )
    assert settings.gpu_results_dir == "results"


def test_host_test_runs_the_smoke_test_on_the_host_too() -> None:
    cpu_only = fixture_lines("tf/smoke-test-cpu-only-tf-2.15.1.json")
    sections = {
        **healthy_sections(),
        "host_smoke_test_run": command_run(
            f"{HOST_TENSORFLOW_PYTHON} - --expected-gpus 1", cpu_only, 1
        ),
    }
    lines = [line for name, output in sections.items() for line in [SECTION_MARKER + name, *output]]
    gathered = VerificationEvidence().process(lines)
    assert states(diagnose(host_evidence("gpu-01", gathered), PINS)) == ["ok"] * 5
    verdict = diagnose(host_evidence("gpu-01", gathered, host_test=True), PINS)
    assert verdict["broken_layer"] == "framework"
    assert verdict["summary"].startswith(
        "gpu-01: BROKEN at framework: this TensorFlow is a CPU-only build — install "
        "tensorflow==2.9.0 (a GPU build) in the host's virtualenv"
    )
    (failed,) = [check for check in verdict["layers"][4]["checks"] if check["passed"] is False]
    assert failed["name"] == "on the host: TensorFlow built with CUDA"


def test_host_test_without_its_virtualenv_is_unverified() -> None:
    gathered = VerificationEvidence().process(
        [f"{SECTION_MARKER}{name}" for name in ("smoke_test_run", "host_smoke_test_run")]
    )
    evidence = host_evidence("gpu-01", gathered, host_test=True)
    assert evidence["host_smoke_test"] is None and evidence["host_smoke_test_output"] is None


@pytest.mark.parametrize(
    ("version", "found"), [("3.11.2", "python3 3.11.2"), ("3.6.9", "python3 3.6.9"), (None, None)]
)
def test_host_test_refuses_pythons_tensorflow_2_9_has_no_wheels_for(
    version: str | None, found: str | None
) -> None:
    problem = host_python_problem(version)
    assert problem is not None
    assert problem.startswith(
        "tensorflow_host_test = True: TensorFlow 2.9.0 needs Python 3.7 to 3.10 on the host, "
        f"which has {found or 'no python3'}; set tensorflow_host_test to false"
    )
    assert host_python_problem("3.7.3") is None and host_python_problem("3.10.12") is None


def test_host_test_plans_its_virtualenv_and_refuses_a_python_too_new(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = {**FIXTURE_KEY_DATA, "tensorflow_host_test": True}
    operations = plan({"gpu-01": (converged_ubuntu_2004(), data)}, verify)
    planned = {op.name.split(" | ")[-1]: op.commands for op in operations["gpu-01"]}
    assert list(planned) == [
        "python3-venv for the host TensorFlow test",
        f"Virtualenv {HOST_TENSORFLOW_VENV}",
        f"TensorFlow 2.9.0 in {HOST_TENSORFLOW_VENV}",
    ]
    assert planned[f"Virtualenv {HOST_TENSORFLOW_VENV}"] == [
        f"python3 -m venv {HOST_TENSORFLOW_VENV}"
    ]

    # Debian 12 plans its stack from a mirror of NVIDIA's ubuntu2004 repository (its own
    # debian12 one has no CUDA 11.2): then its python3 is what refuses the host test.
    debian = bare_debian_12()
    mirror = "https://mirror.example.com/cuda/repos/ubuntu2004/x86_64/"
    with pytest.raises(PyinfraError, match="No hosts remaining"):
        plan({"gpu-02": (debian, {**data, "nvidia_cuda_repo_url": mirror})}, verify)
    assert "which has python3 3.11.2" in caplog.text


def test_standalone_verification_expects_the_driver_the_hosts_os_gets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Ubuntu 20.04's default driver is R535 (NVIDIA's ubuntu2004 repository has no R580).
    host = bare_ubuntu_2004()
    host.pci_lines = ["0000:3b:00.0 0302: 10de:1eb8 (rev a1)"]  # a T4 with no driver yet
    plan({"gpu-01": (host, FIXTURE_KEY_DATA)}, verify)
    assert "BROKEN at driver: the NVIDIA driver is not installed — install driver 535.183.01" in (
        caplog.text
    )


def test_standalone_verification_refuses_a_host_its_stack_does_not_fit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Without a plan there is no driver version to expect.
    data = {**FIXTURE_KEY_DATA, "cuda_install_method": "apt"}
    with pytest.raises(PyinfraError, match="No hosts remaining"):
        plan({"gpu-02": (bare_debian_12(), data)}, verify)
    assert "refusing to deploy, nothing was changed on the host" in caplog.text
    assert (
        "cuda_install_method = 'apt': NVIDIA's debian12 repository has no cuda-toolkit-11-2"
        in caplog.text
    )


def test_the_result_records_each_gpus_coverage_by_the_image() -> None:
    devices: list[PciDevice] = [
        {"address": "0000:3b:00.0", "class_code": "0302", "device_id": "1eb8"},
        {"address": "0000:07:00.0", "class_code": "0302", "device_id": "20b2"},
    ]
    assert coverage_record(devices, "tensorflow/tensorflow:2.9.0-gpu") == [
        {"address": "0000:3b:00.0", "gpu": "Tesla T4 (Turing, compute 7.5)", "grade": "native"},
        {
            "address": "0000:07:00.0",
            "gpu": "NVIDIA A100-SXM4-80GB (Ampere, compute 8.0)",
            "grade": "JIT-only",
        },
    ]
