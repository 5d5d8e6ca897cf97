"""
Layer-by-layer verdict for one GPU host, from evidence already gathered (facts, command outputs,
the smoke test's JSON). Pure functions: nothing here touches a host or imports pyinfra.

The layers build on each other, bottom first: hardware, driver, cuda, container, framework. The
first layer with a failed check is the broken one and the layers above it are not reached, so the
verdict names the lowest thing to fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Required, TypedDict

if TYPE_CHECKING:  # the facts modules import pyinfra; only their shapes are needed here
    from gpufleet.facts.cuda import CudaToolkitsInfo
    from gpufleet.facts.docker import DockerInfoData
    from gpufleet.facts.nvidia import NvidiaKernelInfo, NvidiaSmiInfo

LAYERS = ("hardware", "driver", "cuda", "container", "framework")

NVIDIA_PCI_VENDOR = "10de"
# The TensorFlow the host test (tensorflow_host_test) installs in its virtualenv.
HOST_TENSORFLOW_VERSION = "2.9.0"

LayerState = Literal["ok", "broken", "unverified", "not reached"]
HostState = Literal["ok", "broken", "unverified"]


@dataclass(frozen=True)
class Expectations:
    """What a healthy host of the fleet has."""

    driver_version: str
    cuda_version: str
    cudnn_version: str
    expected_gpu_count: int | None = None  # None: at least one
    default_runtime: str | None = None  # None: docker's default runtime is not checked
    tensorflow_image: str = "tensorflow/tensorflow:2.9.0-gpu"


class CommandRun(TypedDict):
    command: str
    exit_status: int
    output: str  # stdout and stderr together


class HostEvidence(TypedDict, total=False):
    """
    What was seen on the host. A missing key or None means it was not gathered (or the tool is
    absent); the checks that need it are then "unverified" rather than failed.
    """

    host: Required[str]
    lspci: list[str] | None  # `lspci -nn` lines
    nvidia_smi: NvidiaSmiInfo | None
    nvidia_kernel: NvidiaKernelInfo | None
    cuda: CudaToolkitsInfo | None
    cudnn_version: str | None
    ldconfig: list[str] | None  # `ldconfig -p` lines
    docker_info: DockerInfoData | None
    container_gpu_run: CommandRun | None  # `docker run --rm --gpus all IMAGE nvidia-smi -L`
    smoke_test: dict[str, Any] | None  # tf_smoke_test.py's JSON line, parsed
    smoke_test_output: str | None  # everything the smoke test run printed
    # The same on the host itself (tensorflow_host_test); absent when not asked for.
    host_smoke_test: dict[str, Any] | None
    host_smoke_test_output: str | None


class Check(TypedDict):
    name: str
    passed: bool | None  # None: could not be checked
    evidence: str  # the value actually seen
    problem: str | None
    fix: str | None  # the most likely fix, one line


class LayerVerdict(TypedDict):
    layer: str
    state: LayerState
    checks: list[Check]


class HostVerdict(TypedDict):
    host: str
    state: HostState
    broken_layer: str | None
    summary: str
    layers: list[LayerVerdict]


def ok(name: str, evidence: str) -> Check:
    return {"name": name, "passed": True, "evidence": evidence, "problem": None, "fix": None}


def failed(name: str, evidence: str, problem: str, fix: str) -> Check:
    return {"name": name, "passed": False, "evidence": evidence, "problem": problem, "fix": fix}


def unverified(name: str, evidence: str) -> Check:
    return {"name": name, "passed": None, "evidence": evidence, "problem": None, "fix": None}


def outcome(name: str, passed: bool, evidence: str, problem: str, fix: str) -> Check:
    return ok(name, evidence) if passed else failed(name, evidence, problem, fix)


@dataclass(frozen=True)
class KnownFailure:
    """A real error message and what it means; {0}.. are the pattern's groups, {driver},
    {cuda}, {cuda_package}, {cudnn} and {image} the fleet's expectations."""

    pattern: re.Pattern[str]
    problem: str
    fix: str

    def describe(self, groups: Sequence[str], expectations: Expectations) -> tuple[str, str]:
        """(problem, fix) with the placeholders filled in."""
        values = {
            "driver": expectations.driver_version,
            "cuda": expectations.cuda_version,
            "cuda_package": cuda_toolkit_package(expectations),
            "cudnn": expectations.cudnn_version,
            "image": expectations.tensorflow_image,
        }
        return self.problem.format(*groups, **values), self.fix.format(*groups, **values)


def cuda_toolkit_package(expectations: Expectations) -> str:
    return "cuda-toolkit-" + expectations.cuda_version.replace(".", "-")


RERUN = "re-run gpufleet"

DRIVER_LIBRARY_MISMATCH = KnownFailure(
    re.compile(r"Failed to initialize NVML: Driver/library version mismatch"),
    "the loaded NVIDIA kernel module and the user-space libraries differ (driver upgraded "
    "without a reboot)",
    "reboot the host (or unload and reload the nvidia modules) to load driver {driver}",
)

# Most specific and most fundamental first: the first match explains a message.
KNOWN_FAILURES = (
    DRIVER_LIBRARY_MISMATCH,
    KnownFailure(
        re.compile(r"couldn't communicate with the NVIDIA driver"),
        "the NVIDIA kernel module is not loaded",
        "modprobe nvidia; if that fails, install linux-headers-$(uname -r), " + RERUN + " and "
        "reboot (the module must be built for the running kernel)",
    ),
    KnownFailure(
        re.compile(
            r"could not select device driver (?:\"[^\"]*\" )?with capabilities: \[\[gpu\]\]"
        ),
        "docker cannot serve --gpus: no NVIDIA device driver is registered with it",
        "install nvidia-container-toolkit and restart docker (" + RERUN + ")",
    ),
    KnownFailure(
        re.compile(r"unknown or invalid runtime name: nvidia|Unknown runtime specified nvidia"),
        "docker has no 'nvidia' runtime",
        "register it (nvidia-ctk runtime configure --runtime=docker) and restart docker ("
        + RERUN
        + ")",
    ),
    KnownFailure(
        re.compile(r"nvidia-container-cli: requirement error: unsatisfied condition: ([^\n]+)"),
        "the image needs a newer driver ({0})",
        "install driver {driver} (" + RERUN + ") and reboot",
    ),
    KnownFailure(
        re.compile(r"CUDA driver version is insufficient for CUDA runtime version"),
        "the NVIDIA driver is too old for the CUDA runtime",
        "install driver {driver} (" + RERUN + ") and reboot",
    ),
    KnownFailure(
        re.compile(r"Could not load dynamic library '(libcuda\.so[.\d]*)'"),
        "the driver library {0} is not visible (container started without --gpus?)",
        "run the container with --gpus all",
    ),
    KnownFailure(
        re.compile(r"Could not load dynamic library '(libcudart\.so[.\d]*)'"),
        "the CUDA runtime {0} is missing",
        "install {cuda_package} (" + RERUN + "), or use {image}, which ships CUDA {cuda}",
    ),
    KnownFailure(
        re.compile(r"Could not load dynamic library '(libcudnn\.so[.\d]*)'"),
        "cuDNN is missing ({0} not found)",
        "install libcudnn8 {cudnn} for CUDA {cuda} (" + RERUN + "), or use {image}, which ships it",
    ),
    KnownFailure(
        re.compile(r"Could not load dynamic library '([^']+)'"),
        "the CUDA library {0} is missing",
        "install {cuda_package} (" + RERUN + "), or use {image}, which ships CUDA {cuda}",
    ),
    KnownFailure(
        # TF's own words for a process with no GPU device, and tf_smoke_test.py's summary of them.
        re.compile(
            r"failed call to cuInit: CUDA_ERROR_NO_DEVICE"
            r"|kernel driver does not appear to be running on this host"
            r"|missing --gpus all"
        ),
        "no GPU reached the process (container started without --gpus all?)",
        "run the container with --gpus all (and without NVIDIA_VISIBLE_DEVICES=none)",
    ),
    KnownFailure(
        re.compile(
            r"nvidia-smi\"?: (?:command )?not found|\"nvidia-smi\": executable file not found"
        ),
        "the container has no nvidia-smi: it was started without --gpus (the NVIDIA runtime "
        "mounts nvidia-smi and libcuda only then)",
        "run the container with --gpus all",
    ),
)


def explain(text: str, expectations: Expectations) -> tuple[str, str] | None:
    """(problem, fix) for the first known failure message in text, or None."""
    for failure in KNOWN_FAILURES:
        match = failure.pattern.search(text)
        if match:
            return failure.describe(match.groups(), expectations)
    return None


def first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "(no output)"


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def nvidia_gpus_on_pci_bus(lspci: Sequence[str]) -> list[str]:
    """The `lspci -nn` (or `lspci -n`) lines of NVIDIA display controllers (class 03xx).

    The audio, USB and NVSwitch functions NVIDIA boards also expose are other classes.
    """
    gpus = []
    for line in lspci:
        device_class = re.search(r"\[(03[0-9a-f]{2})\]:|^\S+ (03[0-9a-f]{2}):", line)
        if device_class and re.search(rf"\b{NVIDIA_PCI_VENDOR}:[0-9a-f]{{4}}\b", line):
            gpus.append(line.strip())
    return gpus


def expected_count_text(expectations: Expectations) -> str:
    count = expectations.expected_gpu_count
    return "at least 1" if count is None else str(count)


def count_matches(seen: int, expectations: Expectations) -> bool:
    count = expectations.expected_gpu_count
    return seen >= 1 if count is None else seen == count


def check_hardware(evidence: HostEvidence, expectations: Expectations) -> list[Check]:
    name = "NVIDIA GPUs on the PCI bus"
    lspci = evidence.get("lspci")
    if lspci is None:
        return [unverified(name, "lspci not available (install pciutils)")]
    gpus = nvidia_gpus_on_pci_bus(lspci)
    expected = expected_count_text(expectations)
    return [
        outcome(
            name,
            count_matches(len(gpus), expectations),
            f"{len(gpus)} (expected {expected})",
            f"{len(gpus)} NVIDIA GPU(s) on the PCI bus, expected {expected}",
            "check the cards are seated and powered and enabled in the BIOS, or fix the "
            "inventory's expected GPU count",
        )
    ]


def host_gpu_count(evidence: HostEvidence) -> int | None:
    """GPUs the host has: from lspci when known, else from nvidia-smi."""
    lspci = evidence.get("lspci")
    if lspci is not None:
        return len(nvidia_gpus_on_pci_bus(lspci))
    nvidia_smi = evidence.get("nvidia_smi")
    return len(nvidia_smi["gpus"]) if nvidia_smi else None


def check_driver(evidence: HostEvidence, expectations: Expectations) -> list[Check]:
    driver = expectations.driver_version
    nvidia_smi = evidence.get("nvidia_smi")
    answers = "nvidia-smi answers"
    if nvidia_smi is None:
        return [
            failed(
                answers,
                "nvidia-smi not installed",
                "the NVIDIA driver is not installed",
                f"install driver {driver} ({RERUN})",
            )
        ]
    if nvidia_smi["error"]:
        known = explain(nvidia_smi["error"], expectations)
        problem, fix = known or ("nvidia-smi fails", f"reinstall driver {driver} ({RERUN})")
        return [failed(answers, nvidia_smi["error"], problem, fix)]
    checks = [ok(answers, f"{len(nvidia_smi['gpus'])} GPU(s)")]

    version = nvidia_smi["driver_version"] or "unknown"
    checks.append(
        outcome(
            "driver version",
            version == driver,
            version,
            f"driver {version} instead of {driver}",
            f"install driver {driver} ({RERUN}) and reboot",
        )
    )
    kernel = evidence.get("nvidia_kernel")
    loaded = kernel["loaded_driver_version"] if kernel else None
    if loaded is not None:
        checks.append(
            outcome(
                "loaded kernel module matches the libraries",
                loaded == version,
                f"kernel module {loaded}, libraries {version}",
                *DRIVER_LIBRARY_MISMATCH.describe((), expectations),
            )
        )
    supported = nvidia_smi["cuda_version"] or "unknown"
    checks.append(
        outcome(
            f"driver supports CUDA {expectations.cuda_version}",
            version_tuple(supported) >= version_tuple(expectations.cuda_version),
            f"CUDA {supported}",
            f"driver {version} supports CUDA up to {supported} only",
            f"install driver {driver} ({RERUN}) and reboot",
        )
    )
    listed = len(nvidia_smi["gpus"])
    lspci = evidence.get("lspci")
    on_bus = len(nvidia_gpus_on_pci_bus(lspci)) if lspci is not None else None
    wanted = on_bus if on_bus is not None else expectations.expected_gpu_count
    checks.append(
        outcome(
            "driver sees every GPU",
            listed == wanted if wanted is not None else listed >= 1,
            f"{listed} listed by nvidia-smi, {wanted or 'at least 1'} expected",
            f"nvidia-smi lists {listed} GPU(s) of {wanted}: a GPU fell off the bus or failed",
            "look for Xid errors in dmesg (journalctl -k | grep -i xid); reboot, then reseat or "
            "replace the GPU",
        )
    )
    persistence_off = [
        str(gpu["index"]) for gpu in nvidia_smi["gpus"] if not gpu["persistence_mode"]
    ]
    checks.append(
        outcome(
            "persistence mode on",
            not persistence_off,
            f"off on GPU {', '.join(persistence_off)}" if persistence_off else "on",
            "persistence mode is off (slow first CUDA call, driver state lost between jobs)",
            f"enable nvidia-persistenced (systemctl enable --now nvidia-persistenced; {RERUN})",
        )
    )
    return checks


def resolved_libraries(ldconfig: Sequence[str]) -> dict[str, str]:
    """`ldconfig -p` lines -> {soname: path}, first entry wins as in the loader."""
    libraries: dict[str, str] = {}
    for line in ldconfig:
        match = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)", line)
        if match:
            libraries.setdefault(match.group(1), match.group(3))
    return libraries


def check_cuda(evidence: HostEvidence, expectations: Expectations) -> list[Check]:
    cuda = expectations.cuda_version
    install_toolkit = f"install {cuda_toolkit_package(expectations)} ({RERUN})"
    toolkits = (evidence.get("cuda") or {"toolkits": {}})["toolkits"]
    toolkit = toolkits.get(cuda)
    installed = ", ".join(sorted(toolkits)) or "none"
    checks = [
        outcome(
            f"CUDA {cuda} toolkit installed",
            toolkit is not None,
            f"toolkits: {installed}",
            f"no CUDA {cuda} toolkit in /usr/local",
            install_toolkit,
        )
    ]
    if toolkit is not None:
        release = toolkit["nvcc_release"]
        checks.append(
            outcome(
                "nvcc release",
                release == cuda,
                f"{toolkit['path']}/bin/nvcc: release {release or 'missing'}",
                f"nvcc in {toolkit['path']} is missing or reports another release",
                install_toolkit,
            )
        )
    cudnn = evidence.get("cudnn_version")
    wanted_cudnn = major_minor(expectations.cudnn_version)
    install_cudnn = (
        f"install libcudnn8 and libcudnn8-dev {expectations.cudnn_version} for CUDA {cuda} "
        f"({RERUN})"
    )
    checks.append(
        outcome(
            f"cuDNN {wanted_cudnn}.x",
            cudnn is not None and major_minor(cudnn) == wanted_cudnn,
            cudnn or "no cuDNN headers",
            f"cuDNN {cudnn or 'missing'} instead of {expectations.cudnn_version}",
            install_cudnn,
        )
    )
    ldconfig = evidence.get("ldconfig")
    cudnn_major = expectations.cudnn_version.split(".")[0]
    cuda_major = cuda.split(".")[0]
    for soname, fix in (
        (f"libcudnn.so.{cudnn_major}", install_cudnn),
        # CUDA 11.x runtimes all carry the soname libcudart.so.11.0.
        (f"libcudart.so.{cuda_major}.0", install_toolkit),
    ):
        name = f"ldconfig resolves {soname}"
        if ldconfig is None:
            checks.append(unverified(name, "ldconfig -p not gathered"))
            continue
        path = resolved_libraries(ldconfig).get(soname)
        checks.append(
            outcome(
                name,
                path is not None,
                path or "not in the loader cache",
                f"the dynamic loader cannot find {soname}",
                fix,
            )
        )
    return checks


GPU_UUID = re.compile(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def check_container(evidence: HostEvidence, expectations: Expectations) -> list[Check]:
    docker = evidence.get("docker_info")
    if docker is None:
        return [
            failed(
                "docker daemon answers",
                "no answer from docker info",
                "docker is not installed or its daemon is not running",
                f"systemctl start docker (or install docker and {RERUN})",
            )
        ]
    runtimes = ", ".join(sorted(docker["runtimes"])) or "none"
    checks = [
        ok("docker daemon answers", f"docker {docker['server_version']}"),
        outcome(
            "nvidia runtime registered",
            "nvidia" in docker["runtimes"],
            f"runtimes: {runtimes}",
            "docker has no 'nvidia' runtime",
            "install nvidia-container-toolkit and restart docker (" + RERUN + "; daemon.json "
            "runtimes.nvidia missing)",
        ),
    ]
    wanted_default = expectations.default_runtime
    if wanted_default is not None:
        checks.append(
            outcome(
                "default runtime",
                docker["default_runtime"] == wanted_default,
                docker["default_runtime"] or "unknown",
                f"docker's default runtime is {docker['default_runtime']}, not {wanted_default}",
                f'set "default-runtime": "{wanted_default}" in /etc/docker/daemon.json and '
                f"restart docker ({RERUN})",
            )
        )
    checks.append(check_container_gpus(evidence, expectations))
    return checks


def check_container_gpus(evidence: HostEvidence, expectations: Expectations) -> Check:
    name = "--gpus all container sees the host's GPUs"
    run = evidence.get("container_gpu_run")
    if run is None:
        return unverified(name, "no container was run")
    nvidia_smi = evidence.get("nvidia_smi")
    host_uuids = {gpu["uuid"] for gpu in nvidia_smi["gpus"]} if nvidia_smi else set()
    seen = set(GPU_UUID.findall(run["output"]))
    if run["exit_status"] != 0:
        known = explain(run["output"], expectations)
        problem, fix = known or (
            f"`{run['command']}` failed with exit status {run['exit_status']}",
            "read the output above; check `docker info` and journalctl -u docker",
        )
        return failed(name, first_line(run["output"]), problem, fix)
    missing = sorted(host_uuids - seen)
    return outcome(
        name,
        bool(seen) and not missing and seen <= host_uuids,
        f"{len(seen)} of {len(host_uuids)} host GPU UUIDs",
        f"the container sees {len(seen)} of the host's {len(host_uuids)} GPUs"
        + (f" (missing {', '.join(missing)})" if missing else ""),
        "run it with --gpus all and check NVIDIA_VISIBLE_DEVICES is not set in the image or "
        "daemon.json",
    )


def parse_smoke_test_output(output: str) -> dict[str, Any] | None:
    """
    tf_smoke_test.py's report: the last line that is a JSON object. It prints the report last on
    stdout, but stderr merged into the same output (docker's, TensorFlow's at exit) may follow.
    """
    for line in reversed(output.splitlines()):
        if not line.startswith("{"):
            continue
        try:
            report = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(report, dict):
            return report
    return None


def check_framework(evidence: HostEvidence, expectations: Expectations) -> list[Check]:
    image = expectations.tensorflow_image
    checks = smoke_test_checks(
        evidence.get("smoke_test"),
        evidence.get("smoke_test_output") or "",
        evidence,
        expectations,
        where=f"in {image}",
        install_fix=f"run the smoke test in {image}",
    )
    if "host_smoke_test_output" in evidence:
        host_checks = smoke_test_checks(
            evidence.get("host_smoke_test"),
            evidence.get("host_smoke_test_output") or "",
            evidence,
            expectations,
            where="on the host",
            install_fix=f"install tensorflow=={HOST_TENSORFLOW_VERSION} (a GPU build) in the "
            f"host's virtualenv ({RERUN} with tensorflow_host_test)",
        )
        checks += [{**check, "name": f"on the host: {check['name']}"} for check in host_checks]
    return checks


def smoke_test_checks(
    report: dict[str, Any] | None,
    output: str,
    evidence: HostEvidence,
    expectations: Expectations,
    where: str,
    install_fix: str,
) -> list[Check]:
    """The checks of one smoke test run: ``where`` it ran, ``install_fix`` for a TensorFlow that
    is missing or CPU-only there."""
    if report is None:
        name = "smoke test reported"
        if not output:
            return [unverified(name, "smoke test not run")]
        problem, fix = explain(output, expectations) or (
            "the smoke test crashed before reporting",
            f"run it by hand {where} and read its output",
        )
        return [failed(name, first_line(output[-2000:]), problem, fix)]
    version = report.get("tensorflow_version") or "not importable"
    error = report.get("error") or ""
    if report.get("tensorflow_version") is None:
        return [
            failed(
                "TensorFlow imports",
                error,
                "TensorFlow cannot be imported where the smoke test ran",
                install_fix,
            )
        ]
    checks = [
        outcome(
            "TensorFlow built with CUDA",
            bool(report.get("built_with_cuda")),
            f"TensorFlow {version}, is_built_with_cuda={report.get('built_with_cuda')}",
            "this TensorFlow is a CPU-only build",
            install_fix,
        )
    ]
    if not report.get("built_with_cuda"):
        return checks
    gpus = report.get("gpus") or []
    wanted = host_gpu_count(evidence) or expectations.expected_gpu_count or 1
    problem, fix = explain(f"{error}\n{output}", expectations) or (
        f"TensorFlow sees {len(gpus)} of {wanted} GPUs",
        f"run the smoke test with --gpus all in {expectations.tensorflow_image}",
    )
    checks.append(
        outcome(
            "TensorFlow sees every GPU",
            len(gpus) >= wanted,
            f"{len(gpus)} of {wanted}" + (f": {error}" if not gpus else ""),
            problem,
            fix,
        )
    )
    for smoke_check in report.get("checks") or []:
        checks.append(framework_check(smoke_check, expectations))
    return checks


def framework_check(smoke_check: dict[str, Any], expectations: Expectations) -> Check:
    gpu = smoke_check.get("gpu")
    where = "all GPUs" if gpu is None else f"GPU {gpu}"
    name = f"{smoke_check.get('name')} on {where}"
    detail = str(smoke_check.get("detail") or "")
    ms = smoke_check.get("ms")
    evidence = f"{ms} ms; {detail}" if ms is not None else detail
    if smoke_check.get("passed"):
        return ok(name, evidence)
    known = explain(detail, expectations)
    if known:
        return failed(name, evidence, *known)
    if detail.startswith("ran on"):
        return failed(
            name,
            evidence,
            "TensorFlow ran the op on another device",
            f"check the GPU's compute capability is supported by {expectations.tensorflow_image}",
        )
    return failed(
        name,
        evidence,
        f"{where} computes wrong results or fails",
        "look for Xid errors in dmesg and ECC errors (nvidia-smi -q -d ECC); drain the GPU",
    )


LAYER_CHECKS: dict[str, Callable[[HostEvidence, Expectations], list[Check]]] = {
    "hardware": check_hardware,
    "driver": check_driver,
    "cuda": check_cuda,
    "container": check_container,
    "framework": check_framework,
}


def layer_state(checks: Sequence[Check]) -> LayerState:
    if any(check["passed"] is False for check in checks):
        return "broken"
    if any(check["passed"] is None for check in checks):
        return "unverified"
    return "ok"


def summary_line(host: str, layers: Sequence[LayerVerdict], evidence: HostEvidence) -> str:
    for state, word in (("broken", "BROKEN"), ("unverified", "UNVERIFIED")):
        layer = next((layer for layer in layers if layer["state"] == state), None)
        if layer is None:
            continue
        flagged = [check for check in layer["checks"] if check["passed"] is not True]
        first = flagged[0]
        more = f" [+{len(flagged) - 1} more]" if len(flagged) > 1 else ""
        if first["passed"] is None:
            return f"{host}: {word} at {layer['layer']}: {first['name']}: {first['evidence']}{more}"
        return (
            f"{host}: {word} at {layer['layer']}: {first['problem']} — {first['fix']} "
            f"(seen: {first['evidence']}){more}"
        )
    return f"{host}: OK — {healthy_description(evidence)}"


def healthy_description(evidence: HostEvidence) -> str:
    nvidia_smi = evidence.get("nvidia_smi")
    gpus = nvidia_smi["gpus"] if nvidia_smi else []
    report = evidence.get("smoke_test") or {}
    parts = [
        gpu_models(gpus),
        f"driver {nvidia_smi['driver_version'] if nvidia_smi else '?'}",
        f"cuDNN {evidence.get('cudnn_version')}",
        f"TensorFlow {report.get('tensorflow_version')}",
    ]
    return ", ".join(parts)


def gpu_models(gpus: Sequence[Any]) -> str:
    """'8x Tesla V100-SXM2-32GB' or '1x A, 1x B' (GPUs are dicts with a "name")."""
    counts: dict[str, int] = {}
    for gpu in gpus:
        counts[gpu["name"]] = counts.get(gpu["name"], 0) + 1
    return ", ".join(f"{count}x {name}" for name, count in counts.items()) or "no GPU"


def diagnose(evidence: HostEvidence, expectations: Expectations) -> HostVerdict:
    layers: list[LayerVerdict] = []
    broken_layer: str | None = None
    for layer in LAYERS:
        if broken_layer is not None:
            layers.append({"layer": layer, "state": "not reached", "checks": []})
            continue
        checks = LAYER_CHECKS[layer](evidence, expectations)
        state = layer_state(checks)
        layers.append({"layer": layer, "state": state, "checks": checks})
        if state == "broken":
            broken_layer = layer
    states = {layer["state"] for layer in layers}
    host_state: HostState = (
        "broken" if broken_layer else "unverified" if "unverified" in states else "ok"
    )
    return {
        "host": evidence["host"],
        "state": host_state,
        "broken_layer": broken_layer,
        "summary": summary_line(evidence["host"], layers, evidence),
        "layers": layers,
    }
