"""
Fleet report: one row per host from a folder of per-host result files, as a self-contained HTML
page (templates/fleet-report.html.j2) and as a Markdown table for terminals. Versions that differ
from the fleet's pinned ones (drift) are highlighted in both.

Each result file is JSON: {"host", "os", "verdict": HostVerdict, "facts": {...}, "smoke_test":
tf_smoke_test.py's report or null}, with facts keyed as GpuHostState's (nvidia_smi, cuda,
cudnn_version, docker_info, ...). A file that cannot be read, or is shaped otherwise, is a row
saying why. Values from the hosts are escaped in both reports.

    gpufleet report RESULTS_DIR --driver 470.182.03 --cuda 11.2 --cudnn 8.1.1.33 \\
        [--html out.html] [--markdown out.md]
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_args

from jinja2 import Environment, PackageLoader, StrictUndefined

from gpufleet.diagnosis import Expectations, HostState, gpu_models
from gpufleet.stack.versions import CudnnPin

COLUMNS = (
    ("host", "Host"),
    ("os", "OS"),
    ("driver", "Driver"),
    ("cuda", "CUDA"),
    ("cudnn", "cuDNN"),
    ("runtime", "Container runtime"),
    ("gpus", "GPUs"),
    ("tensorflow", "TensorFlow"),
    ("matmul_ms", "matmul ms per GPU"),
    ("broken_layer", "Broken layer"),
)

# Autoescape: every value from the hosts is HTML-escaped wherever the page shows it.
HTML_TEMPLATES = Environment(
    loader=PackageLoader("gpufleet", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


@dataclass(frozen=True)
class Row:
    cells: dict[str, str]  # column key -> text
    state: str  # "ok", "broken", "unverified" or "unreadable"
    drift: frozenset[str]  # column keys whose version differs from the pinned one
    summary: str


class UnreadableResult(ValueError):
    """Why a result file gives no host row: unreadable, not JSON, or not shaped as gpufleet's."""


T = TypeVar("T")
# What JSON calls the types json.loads makes, to say what a value is and what was expected.
JSON_TYPE_NAMES: dict[type, str] = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true or false",
    type(None): "null",
}
STATES: tuple[str, ...] = get_args(HostState)


def optional(parent: dict[str, Any], key: str, kind: type[T] | tuple[type[T], ...]) -> T | None:
    """``parent[key]``: None when absent or null, UnreadableResult when not of ``kind``."""
    value = parent.get(key)
    if value is None or isinstance(value, kind):
        return value
    kinds = kind if isinstance(kind, tuple) else (kind,)
    expected = " or ".join(dict.fromkeys(JSON_TYPE_NAMES[each] for each in kinds))
    raise UnreadableResult(f"{key} is {JSON_TYPE_NAMES[type(value)]}, not {expected}")


def required(parent: dict[str, Any], key: str, kind: type[T]) -> T:
    """``parent[key]``; UnreadableResult when absent, null or not of ``kind``."""
    value = optional(parent, key, kind)
    if value is None:
        raise UnreadableResult(f"no {key}")
    return value


def objects(parent: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The objects listed in ``parent[key]`` (none when absent or null)."""
    values: list[Any] = optional(parent, key, list) or []
    for value in values:
        if not isinstance(value, dict):
            raise UnreadableResult(f"{key} lists {JSON_TYPE_NAMES[type(value)]}, not an object")
    return values


def pinned_cuda_release(cuda: dict[str, Any], pins: Expectations) -> str | None:
    toolkit = optional(optional(cuda, "toolkits", dict) or {}, pins.cuda_version, dict)
    return optional(toolkit, "nvcc_release", str) if toolkit else None


def runtime_text(docker_info: dict[str, Any] | None) -> str:
    if not docker_info:
        return "no docker"
    default = optional(docker_info, "default_runtime", str) or "?"
    runtimes = optional(docker_info, "runtimes", dict) or {}
    nvidia = "nvidia registered" if "nvidia" in runtimes else "no nvidia"
    return f"default {default}, {nvidia}"


def tensorflow_text(smoke_test: dict[str, Any] | None) -> str:
    if smoke_test is None:
        return "not run"
    version = optional(smoke_test, "tensorflow_version", str) or "not importable"
    if optional(smoke_test, "passed", bool):
        return f"{version} pass"
    return f"{version} FAIL: {optional(smoke_test, 'error', str) or 'failed'}"


def matmul_text(smoke_test: dict[str, Any] | None) -> str:
    timings = [
        f"{check.get('gpu')}: {ms:.2f}"
        for check in objects(smoke_test or {}, "checks")
        if check.get("name") == "matmul" and (ms := optional(check, "ms", (int, float))) is not None
    ]
    return ", ".join(timings) or "-"


def host_row(result: dict[str, Any], pins: Expectations) -> Row:
    """The host's row; UnreadableResult when a value the report shows has an unexpected type."""
    host = required(result, "host", str)
    facts = required(result, "facts", dict)
    verdict = required(result, "verdict", dict)
    nvidia_smi = optional(facts, "nvidia_smi", dict) or {}
    cuda = optional(facts, "cuda", dict) or {}
    smoke_test = optional(result, "smoke_test", dict)
    driver = optional(nvidia_smi, "driver_version", str)
    cuda_release = pinned_cuda_release(cuda, pins)
    toolkits = sorted(optional(cuda, "toolkits", dict) or {})
    cudnn = optional(facts, "cudnn_version", str)
    drift = {
        column
        for column, seen, pinned in (
            ("driver", driver, pins.driver_version),
            ("cuda", cuda_release, pins.cuda_version),
            # Hosts report cuDNN's header version (8.1.1) of the pin (8.1.1.33).
            ("cudnn", cudnn, CudnnPin(pins.cudnn_version).header_version),
        )
        if seen != pinned
    }
    # gpu_models reads each GPU's name only.
    gpus = [{"name": required(gpu, "name", str)} for gpu in objects(nvidia_smi, "gpus")]
    state = optional(verdict, "state", str) or "unverified"
    if state not in STATES:
        raise UnreadableResult(f"state is {state!r}, not one of {', '.join(STATES)}")
    cells = {
        "host": host,
        "os": optional(result, "os", str) or "?",
        "driver": driver or "none",
        "cuda": ", ".join(toolkits) or "none",
        "cudnn": cudnn or "none",
        "runtime": runtime_text(optional(facts, "docker_info", dict)),
        "gpus": gpu_models(gpus),
        "tensorflow": tensorflow_text(smoke_test),
        "matmul_ms": matmul_text(smoke_test),
        "broken_layer": optional(verdict, "broken_layer", str)
        or ("-" if state == "ok" else f"({state})"),
    }
    return Row(cells, state, frozenset(drift), optional(verdict, "summary", str) or "")


def unreadable_row(path: Path, reason: str) -> Row:
    cells = {key: "?" for key, _ in COLUMNS}
    cells["host"] = path.stem
    cells["broken_layer"] = "(unreadable)"
    return Row(cells, "unreadable", frozenset(), f"{path.name}: unreadable result file: {reason}")


def read_result(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; UnreadableResult saying why there is none."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UnreadableResult(str(error)) from error
    if not isinstance(result, dict):
        raise UnreadableResult(f"{JSON_TYPE_NAMES[type(result)]}, not an object")
    return result


def load_rows(results_dir: Path, pins: Expectations) -> list[Row]:
    """One row per result file; a file that cannot be read is a row saying why."""
    rows = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            rows.append(host_row(read_result(path), pins))
        except UnreadableResult as error:
            rows.append(unreadable_row(path, str(error)))
    return rows


def pins_text(pins: Expectations) -> str:
    return f"driver {pins.driver_version}, CUDA {pins.cuda_version}, cuDNN {pins.cudnn_version}"


def totals_text(rows: Sequence[Row]) -> str:
    counts = [
        f"{sum(row.state == state for row in rows)} {state}"
        for state in ("ok", "broken", "unverified", "unreadable")
    ]
    drifted = sum(bool(row.drift) for row in rows)
    return f"{len(rows)} hosts: {', '.join(counts)}, {drifted} drifted"


def problem_summaries(rows: Sequence[Row]) -> list[str]:
    """The summaries of the hosts that are not ok, listed under the table."""
    return [row.summary for row in rows if row.state != "ok" and row.summary]


def markdown_cell(text: str) -> str:
    """
    ``text`` as inline Markdown that shows as written: on one line, with no HTML, no code span,
    and no ``|`` ending a table cell.
    """
    one_line = " ".join(text.split())
    for character in ("\\", "|", "`"):
        one_line = one_line.replace(character, "\\" + character)
    return html.escape(one_line, quote=False)


def render_markdown(rows: Sequence[Row], pins: Expectations) -> str:
    lines = [
        f"Fleet report (pinned: {markdown_cell(pins_text(pins))}). {totals_text(rows)}.",
        "",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = []
        for key, _ in COLUMNS:
            text = markdown_cell(row.cells[key])
            if key in row.drift:
                text = f"**{text}** (drift)"
            elif key == "host" and row.drift:
                text = f"{text} DRIFT"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    problems = problem_summaries(rows)
    if problems:
        lines += ["", *(f"- {markdown_cell(summary)}" for summary in problems)]
    return "\n".join(lines) + "\n"


def render_html(rows: Sequence[Row], pins: Expectations) -> str:
    return HTML_TEMPLATES.get_template("fleet-report.html.j2").render(
        columns=COLUMNS,
        rows=rows,
        problems=problem_summaries(rows),
        pins=pins_text(pins),
        totals=totals_text(rows),
    )
