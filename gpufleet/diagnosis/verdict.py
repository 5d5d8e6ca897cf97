"""The host's verdict: each layer's checks, bottom first, up to the first broken layer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, TypedDict

from gpufleet.diagnosis.checks import Check
from gpufleet.diagnosis.container import check_container
from gpufleet.diagnosis.cuda import check_cuda
from gpufleet.diagnosis.driver import check_driver
from gpufleet.diagnosis.evidence import Expectations, HostEvidence
from gpufleet.diagnosis.framework import check_framework
from gpufleet.diagnosis.hardware import check_hardware

LayerState = Literal["ok", "broken", "unverified", "not reached"]
HostState = Literal["ok", "broken", "unverified"]


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


# Bottom first: each layer builds on the ones before it.
LAYER_CHECKS: dict[str, Callable[[HostEvidence, Expectations], list[Check]]] = {
    "hardware": check_hardware,
    "driver": check_driver,
    "cuda": check_cuda,
    "container": check_container,
    "framework": check_framework,
}
LAYERS = tuple(LAYER_CHECKS)


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
