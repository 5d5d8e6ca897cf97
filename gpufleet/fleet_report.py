"""
Fleet report: one row per host from a folder of per-host result files, as a self-contained HTML
page (templates/fleet-report.html.j2) and as a Markdown table for terminals. Hosts that need
someone come first (broken, then unverified, then unreadable result files, then OK); identical
problems are listed once with the hosts they hit; versions that differ from the fleet's pinned
ones (drift) are highlighted.

Each result file is JSON: {"host", "os", "verdict": HostVerdict, "facts": {...}, "smoke_test":
tf_smoke_test.py's report or null}, with facts keyed as GpuHostState's (nvidia_smi, cuda,
cudnn_version, docker_info, ...), and, in files from newer gpufleet versions, "generated_at",
"gpufleet_version", "container_toolkit_version" and "pinned_packages" (shown as "?" when absent).
A file that cannot be read, or is shaped otherwise, is a row saying why. Values from the hosts
are escaped in both reports.

    gpufleet report RESULTS_DIR --driver 470.182.03 --cuda 11.2 --cudnn 8.1.1.33 \\
        [--html out.html] [--markdown out.md]
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar, get_args

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

from gpufleet.diagnosis import Expectations, HostState, gpu_models
from gpufleet.run_summary import RUN_SUMMARY_PREFIX
from gpufleet.stack.versions import CudnnPin

COLUMNS = (
    ("host", "Host"),
    ("os", "OS"),
    ("driver", "Driver"),
    ("cuda", "CUDA"),
    ("cudnn", "cuDNN"),
    ("runtime", "Container runtime"),
    ("toolkit", "Container toolkit"),
    ("docker", "Docker"),
    ("gpus", "GPUs"),
    ("tensorflow", "TensorFlow"),
    ("matmul_ms", "matmul ms per GPU"),
    ("dcgm", "DCGM diagnostic"),
    ("holds", "Holds"),
    ("broken_layer", "Broken layer"),
    ("checked", "Checked"),
)


def code_spans(text: str) -> Markup:
    """
    ``text`` escaped, its `backtick-quoted` parts as <code> elements: the diagnosis quotes
    commands so, and the page shows them as code rather than as backticks.
    """
    return Markup("").join(
        Markup("<code>{}</code>").format(part) if index % 2 else escape(part)
        for index, part in enumerate(text.split("`"))
    )


def plural(count: int, noun: str) -> str:
    """'1 host', '2 hosts'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# Autoescape: every value from the hosts is HTML-escaped wherever the page shows it.
HTML_TEMPLATES = Environment(
    loader=PackageLoader("gpufleet", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
HTML_TEMPLATES.filters["code_spans"] = code_spans
HTML_TEMPLATES.filters["plural"] = plural


@dataclass(frozen=True)
class Problem:
    """What a host's verdict names first; hosts with the same Problem are listed once."""

    state: str  # the hosts' state: "broken", "unverified" or "unreadable"
    layer: str  # the verdict's layer, or "result file"
    text: str
    fix: str | None

    @property
    def heading(self) -> str:
        """'BROKEN at driver', as the verdict's summary line says it."""
        if self.state == "unreadable":
            return "UNREADABLE result file"
        return f"{self.state.upper()} at {self.layer}"


@dataclass(frozen=True)
class Row:
    cells: dict[str, str]  # column key -> text
    state: str  # "ok", "broken", "unverified" or "unreadable"
    drift: frozenset[str]  # column keys whose version differs from the pinned one
    result_file: str  # the file's name in the results folder
    problem: Problem | None  # None when the host is ok
    note: str = ""  # what the problem list says of this host: what it showed, further checks


@dataclass
class ProblemGroup:
    problem: Problem
    rows: list[Row] = field(default_factory=list)  # the hosts it hits


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
# Who needs someone first: broken hosts, HostState's other states short of ok, result files
# that cannot be read (the host's state is unknown), then the ok hosts.
ATTENTION_ORDER: tuple[str, ...] = (
    "broken",
    *(state for state in STATES if state not in ("broken", "ok")),
    "unreadable",
    "ok",
)


def timestamp_text(moment: datetime) -> str:
    """'2026-11-03 02:14:05 UTC'."""
    return f"{moment.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"


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


def pinned_versions(pins: Expectations) -> dict[str, str]:
    """Column key -> the version the fleet is pinned to, as hosts report it."""
    return {
        "driver": pins.driver_version,
        "cuda": pins.cuda_version,
        # Hosts report cuDNN's header version (8.1.1) of the pin (8.1.1.33).
        "cudnn": CudnnPin(pins.cudnn_version).header_version,
    }


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


def docker_text(docker_info: dict[str, Any] | None) -> str:
    if not docker_info:
        return "none"  # no docker client, or no daemon answered it
    return optional(docker_info, "server_version", str) or "?"


def toolkit_text(result: dict[str, Any]) -> str:
    if "container_toolkit_version" not in result:
        return "?"  # written before gpufleet recorded it
    return optional(result, "container_toolkit_version", str) or "none"


def holds_text(result: dict[str, Any]) -> str:
    """Whether the packages gpufleet pins are held: 'all 14 held', '2 of 14 not held: a, b'."""
    if result.get("pinned_packages") is None:
        return "?"  # written before gpufleet recorded its pins
    packages = objects(result, "pinned_packages")
    if not packages:
        return "-"
    loose = [required(each, "name", str) for each in packages if not required(each, "held", bool)]
    if loose:
        return f"{len(loose)} of {len(packages)} not held: {', '.join(loose)}"
    return "1 held" if len(packages) == 1 else f"all {len(packages)} held"


def checked_text(result: dict[str, Any]) -> str:
    """When, and by which gpufleet, the result was written: '2026-11-03 02:14:05 UTC, 0.2.0'."""
    written = optional(result, "generated_at", str)
    version = optional(result, "gpufleet_version", str)
    when = iso_timestamp_text(written) if written else "?"
    return f"{when}, gpufleet {version}" if version else when


def iso_timestamp_text(text: str) -> str:
    """An ISO 8601 time as timestamp_text writes it; unchanged when it is not one."""
    # Python 3.10's fromisoformat does not read a "Z" suffix.
    offset_text = f"{text[:-1]}+00:00" if text.endswith("Z") else text
    try:
        moment = datetime.fromisoformat(offset_text)
    except ValueError:
        return text
    return timestamp_text(moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))


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


# The DCGM figures a row shows, by their name in the result's dcgm_diag (facts/dcgm.py FIGURES).
DCGM_FIGURES = (
    ("host_to_gpu_gb_s", "H2D {:g} GB/s"),
    ("gpu_to_host_gb_s", "D2H {:g} GB/s"),
    ("gflops", "{:g} GFLOPS"),
    ("max_power_w", "{:g} W max"),
)


def dcgm_text(diag: dict[str, Any] | None) -> str:
    """`L2 pass` or `L2 FAIL: pcie`, then each GPU's figures: what gpu_dcgm's run measured."""
    if diag is None:
        return "-"
    level = optional(diag, "level", int)
    failed = sorted(
        name
        for name, result in (optional(diag, "summary", dict) or {}).items()
        if isinstance(result, dict) and result.get("status") in ("fail", "warn")
    )
    parts = [f"L{level} " + (f"FAIL: {', '.join(failed)}" if failed else "pass")]
    for gpu in objects(diag, "gpus"):
        measured = [
            label.format(value)
            for test in (optional(gpu, "tests", dict) or {}).values()
            if isinstance(test, dict)
            for name, label in DCGM_FIGURES
            if isinstance(value := (test.get("figures") or {}).get(name), (int, float))
        ]
        if measured:
            parts.append(f"{gpu.get('gpu')}: {', '.join(measured)}")
    return "; ".join(parts)


def flagged_checks(verdict: dict[str, Any], state: str) -> tuple[str, list[dict[str, Any]]]:
    """
    (layer, checks): the checks that did not pass in the first layer in ``state`` that has any,
    the first of them the one the verdict's summary line names; ("", []) when there are none.
    """
    for layer in objects(verdict, "layers"):
        if optional(layer, "state", str) == state:
            flagged = [
                check for check in objects(layer, "checks") if check.get("passed") is not True
            ]
            if flagged:
                return required(layer, "layer", str), flagged
    return "", []


def host_problem(verdict: dict[str, Any], state: str) -> tuple[Problem | None, str]:
    """
    The host's problem, and the note the problem list gives the host: what it showed, and how
    many more checks of that layer did not pass.
    """
    if state == "ok":
        return None, ""
    layer, flagged = flagged_checks(verdict, state)
    if not flagged:
        summary = optional(verdict, "summary", str) or "the verdict gives no details"
        return Problem(state, optional(verdict, "broken_layer", str) or "?", summary, None), ""
    first = flagged[0]
    evidence = optional(first, "evidence", str) or "?"
    further = len(flagged) - 1
    notes = [f"{plural(further, 'more check')} in its result file"] if further else []
    problem = optional(first, "problem", str)
    if problem is None:  # not checked: what was seen is the problem
        text = f"{required(first, 'name', str)}: {evidence}"
        return Problem(state, layer, text, None), "; ".join(notes)
    note = "; ".join([f"seen: {evidence}", *notes])
    return Problem(state, layer, problem, optional(first, "fix", str)), note


def host_row(result: dict[str, Any], pins: Expectations, result_file: str) -> Row:
    """The host's row; UnreadableResult when a value the report shows has an unexpected type."""
    host = required(result, "host", str)
    facts = required(result, "facts", dict)
    verdict = required(result, "verdict", dict)
    nvidia_smi = optional(facts, "nvidia_smi", dict) or {}
    cuda = optional(facts, "cuda", dict) or {}
    docker_info = optional(facts, "docker_info", dict)
    smoke_test = optional(result, "smoke_test", dict)
    versions = {
        "driver": optional(nvidia_smi, "driver_version", str),
        "cuda": pinned_cuda_release(cuda, pins),
        "cudnn": optional(facts, "cudnn_version", str),
    }
    pinned = pinned_versions(pins)
    drift = frozenset(column for column, seen in versions.items() if seen != pinned[column])
    # gpu_models reads each GPU's name only.
    gpus = [{"name": required(gpu, "name", str)} for gpu in objects(nvidia_smi, "gpus")]
    state = optional(verdict, "state", str) or "unverified"
    if state not in STATES:
        raise UnreadableResult(f"state is {state!r}, not one of {', '.join(STATES)}")
    cells = {
        "host": host,
        "os": optional(result, "os", str) or "?",
        "driver": versions["driver"] or "none",
        "cuda": ", ".join(sorted(optional(cuda, "toolkits", dict) or {})) or "none",
        "cudnn": versions["cudnn"] or "none",
        "runtime": runtime_text(docker_info),
        "toolkit": toolkit_text(result),
        "docker": docker_text(docker_info),
        "gpus": gpu_models(gpus),
        "tensorflow": tensorflow_text(smoke_test),
        "matmul_ms": matmul_text(smoke_test),
        "dcgm": dcgm_text(optional(facts, "dcgm_diag", dict)),
        "holds": holds_text(result),
        "broken_layer": optional(verdict, "broken_layer", str)
        or ("-" if state == "ok" else f"({state})"),
        "checked": checked_text(result),
    }
    problem, note = host_problem(verdict, state)
    return Row(cells, state, drift, result_file, problem, note)


def unreadable_row(path: Path, reason: str) -> Row:
    cells = {key: "?" for key, _ in COLUMNS}
    cells["host"] = path.stem
    cells["broken_layer"] = "(unreadable)"
    problem = Problem("unreadable", "result file", reason, None)
    return Row(cells, "unreadable", frozenset(), path.name, problem)


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
    """
    One row per result file, in ATTENTION_ORDER and by host name within a state; a file that
    cannot be read is a row saying why.
    """
    rows = []
    for path in results_dir.glob("*.json"):
        if path.name.startswith(RUN_SUMMARY_PREFIX):
            continue  # a run's summary (gpufleet/run_summary.py), not a host's result
        try:
            rows.append(host_row(read_result(path), pins, path.name))
        except UnreadableResult as error:
            rows.append(unreadable_row(path, str(error)))
    return sorted(
        rows, key=lambda row: (ATTENTION_ORDER.index(row.state), row.cells["host"], row.result_file)
    )


def pins_text(pins: Expectations) -> str:
    return f"driver {pins.driver_version}, CUDA {pins.cuda_version}, cuDNN {pins.cudnn_version}"


def count_parts(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """(CSS class, text) of each count: '2 broken', '5 OK', '1 drifted'; none for zero hosts."""
    parts = []
    for state in ATTENTION_ORDER:
        count = sum(row.state == state for row in rows)
        if count:
            parts.append((state, f"{count} {'OK' if state == 'ok' else state}"))
    drifted = sum(bool(row.drift) for row in rows)
    if drifted:
        parts.append(("drift", f"{drifted} drifted"))
    return parts


def totals_text(rows: Sequence[Row]) -> str:
    """'8 hosts: 2 broken · 1 unverified · 5 OK · 1 drifted'."""
    counts = " · ".join(text for _, text in count_parts(rows)) or "no result files"
    return f"{plural(len(rows), 'host')}: {counts}"


def problem_groups(rows: Sequence[Row]) -> list[ProblemGroup]:
    """Each distinct problem once, with the hosts it hits, in the rows' order."""
    groups: dict[Problem, ProblemGroup] = {}
    for row in rows:
        if row.problem is not None:
            groups.setdefault(row.problem, ProblemGroup(row.problem)).rows.append(row)
    return list(groups.values())


def results_link_prefix(results_dir: Path, page: Path) -> str:
    """
    The results folder as a link from the page at ``page``, ending in "/" ("" when the page is
    in it), for links to the result files beside it or below it.
    """
    folder = Path(os.path.relpath(results_dir.resolve(), page.resolve().parent)).as_posix()
    return "" if folder == "." else f"{folder}/"


def markdown_cell(text: str) -> str:
    """
    ``text`` as inline Markdown that shows as written: on one line, with no HTML, no code span,
    and no ``|`` ending a table cell.
    """
    one_line = " ".join(text.split())
    for character in ("\\", "|", "`"):
        one_line = one_line.replace(character, "\\" + character)
    return html.escape(one_line, quote=False)


def markdown_problem(group: ProblemGroup) -> list[str]:
    """The problem as a list item, with a sub-item per host it hits."""
    problem = group.problem
    fix = f" — fix: {problem.fix}" if problem.fix else ""
    lines = [
        f"- {problem.heading}, {plural(len(group.rows), 'host')}: "
        f"{markdown_cell(problem.text + fix)}"
    ]
    for row in group.rows:
        note = f" ({row.note})" if row.note else ""
        lines.append(f"  - {markdown_cell(row.cells['host'] + note)}")
    return lines


def render_markdown(
    rows: Sequence[Row], pins: Expectations, generated_at: datetime | None = None
) -> str:
    """The table and the problems, generated at ``generated_at`` (now when not given)."""
    generated = timestamp_text(generated_at or datetime.now(timezone.utc))
    lines = [
        f"Fleet report of {generated} (pinned: {markdown_cell(pins_text(pins))}). "
        f"{totals_text(rows)}.",
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
    groups = problem_groups(rows)
    if groups:
        lines += ["", "Problems:", ""]
        lines += [line for group in groups for line in markdown_problem(group)]
    return "\n".join(lines) + "\n"


def render_html(
    rows: Sequence[Row],
    pins: Expectations,
    generated_at: datetime | None = None,
    results_link_prefix: str = "",
) -> str:
    """
    The page, generated at ``generated_at`` (now when not given), each host linking to its
    result file at ``results_link_prefix`` + its name (see results_link_prefix()).
    """
    return HTML_TEMPLATES.get_template("fleet-report.html.j2").render(
        columns=COLUMNS,
        rows=rows,
        counts=count_parts(rows),
        host_count=plural(len(rows), "host"),
        totals=totals_text(rows),
        problems=problem_groups(rows),
        pins=pins_text(pins),
        pinned=pinned_versions(pins),
        generated=timestamp_text(generated_at or datetime.now(timezone.utc)),
        results_link_prefix=results_link_prefix,
    )
