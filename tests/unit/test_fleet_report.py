"""
fleet_report: rows from a results folder, drift highlighting, escaping, and the CLI.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, cast

import pytest
from click.testing import CliRunner, Result

from gpufleet.cli import main
from gpufleet.diagnosis import Expectations, HostEvidence, diagnose
from gpufleet.fleet_report import (
    Problem,
    code_spans,
    dcgm_text,
    load_rows,
    render_html,
    render_markdown,
    results_link_prefix,
    totals_text,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "tf"
PINS = Expectations(driver_version="470.182.03", cuda_version="11.2", cudnn_version="8.1.1")
PIN_ARGUMENTS = ["--driver", "470.182.03", "--cuda", "11.2", "--cudnn", "8.1.1"]
GENERATED_AT = datetime(2026, 11, 3, 2, 14, 5, tzinfo=timezone.utc)


def host_result(host: str, os_name: str, **evidence_changes: Any) -> dict[str, Any]:
    """A result file as gpufleet writes it, from the healthy evidence fixture with changes."""
    evidence: dict[str, Any] = json.loads(
        (FIXTURES / "host-evidence-healthy-2xv100.json").read_text()
    )
    evidence["smoke_test"] = json.loads(
        (FIXTURES / "smoke-test-2gpu-pass.synthetic.json").read_text()
    )
    evidence.update(host=host, **evidence_changes)
    verdict = diagnose(cast(HostEvidence, evidence), PINS)
    facts = {key: evidence[key] for key in ("nvidia_smi", "cuda", "cudnn_version", "docker_info")}
    return {
        "host": host,
        "os": os_name,
        "verdict": verdict,
        "facts": facts,
        "smoke_test": evidence["smoke_test"],
    }


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    healthy = host_result("gpu-01", "Ubuntu 20.04.6 LTS")
    drifted = host_result("gpu-02", "Ubuntu 20.04.6 LTS", cudnn_version="8.1.0")
    healthy_smi = healthy["facts"]["nvidia_smi"]
    old_driver = host_result(
        "gpu-03", "Ubuntu 18.04.6 LTS", nvidia_smi={**healthy_smi, "driver_version": "460.32.03"}
    )
    # Host-controlled text: markup, and the Markdown table's cell separator and code quote.
    hostile_gpus = [
        {**healthy_smi["gpus"][0], "name": "<script>alert(1)</script>"},
        {**healthy_smi["gpus"][1], "name": "`V100` | 16GB\nSXM2"},
    ]
    hostile = host_result(
        "<script>alert(1)</script>",
        "Debian | 12 & co",
        nvidia_smi={**healthy_smi, "gpus": hostile_gpus},
        smoke_test=None,
        smoke_test_output=None,
    )
    for name, result in (
        ("gpu-01", healthy),
        ("gpu-02", drifted),
        ("gpu-03", old_driver),
        ("hostile", hostile),
    ):
        (tmp_path / f"{name}.json").write_text(json.dumps(result))
    (tmp_path / "gpu-04.json").write_text('{"host": "gpu-04", ')  # cut off mid-write
    return tmp_path


def markdown_rows(markdown: str) -> dict[str, str]:
    return {
        line.split(" | ")[0].lstrip("| "): line
        for line in markdown.splitlines()
        if line.startswith("| ")
    }


def test_rows_come_broken_first_and_carry_each_hosts_values(results_dir: Path) -> None:
    rows = load_rows(results_dir, PINS)
    assert [(row.cells["host"], row.state) for row in rows] == [
        ("gpu-03", "broken"),
        ("<script>alert(1)</script>", "unverified"),
        ("gpu-04", "unreadable"),
        ("gpu-01", "ok"),
        ("gpu-02", "ok"),
    ]
    old_driver, hostile, unreadable, healthy, drifted = rows
    assert healthy.cells == {
        "host": "gpu-01",
        "os": "Ubuntu 20.04.6 LTS",
        "driver": "470.182.03",
        "cuda": "11.2",
        "cudnn": "8.1.1",
        "runtime": "default runc, nvidia registered",
        "toolkit": "?",
        "docker": "28.0.0-rc.1",
        "gpus": "2x Tesla V100-SXM2-16GB",
        "tensorflow": "2.9.0 pass",
        "matmul_ms": "0: 0.41, 1: 0.41",
        "dcgm": "-",
        "holds": "?",
        "broken_layer": "-",
        "checked": "?",
    }
    assert (healthy.drift, healthy.problem, healthy.result_file) == (
        frozenset(),
        None,
        "gpu-01.json",
    )
    assert drifted.drift == {"cudnn"}
    assert old_driver.drift == {"driver"}
    assert old_driver.cells["broken_layer"] == "driver"
    assert old_driver.problem == Problem(
        "broken",
        "driver",
        "driver 460.32.03 instead of 470.182.03",
        "install driver 470.182.03 (re-run gpufleet) and reboot",
    )
    assert old_driver.note == "seen: 460.32.03; 1 more check in its result file"
    assert unreadable.result_file == "gpu-04.json"
    assert hostile.cells["gpus"] == "1x <script>alert(1)</script>, 1x `V100` | 16GB\nSXM2"
    assert hostile.cells["tensorflow"] == "not run"
    assert hostile.cells["broken_layer"] == "(unverified)"
    assert hostile.problem == Problem(
        "unverified", "framework", "smoke test reported: smoke test not run", None
    )
    assert hostile.note == ""


PINNED: list[dict[str, Any]] = [
    {"name": "cuda-drivers", "version": "470.182.03-1", "held": True},
    {"name": "libcudnn8", "version": "8.1.1.33-1+cuda11.2", "held": True},
    {"name": "nvidia-container-toolkit", "version": None, "held": True},
]


@pytest.mark.parametrize(
    ("new_keys", "toolkit", "holds", "checked"),
    [
        (
            {
                "generated_at": "2026-11-03T01:58:12+00:00",
                "gpufleet_version": "0.1.0",
                "container_toolkit_version": "1.17.8",
                "pinned_packages": PINNED,
            },
            "1.17.8",
            "all 3 held",
            "2026-11-03 01:58:12 UTC, gpufleet 0.1.0",
        ),
        (
            {
                "generated_at": "2026-11-03T03:58:12+02:00",
                "container_toolkit_version": None,
                "pinned_packages": [{**PINNED[0], "held": False}, *PINNED[1:]],
            },
            "none",
            "1 of 3 not held: cuda-drivers",
            "2026-11-03 01:58:12 UTC",
        ),
        (
            {
                "generated_at": "2026-11-03T01:58:12Z",
                "pinned_packages": [{**each, "held": False} for each in PINNED[:2]],
            },
            "?",
            "2 of 2 not held: cuda-drivers, libcudnn8",
            "2026-11-03 01:58:12 UTC",
        ),
        ({"generated_at": "yesterday", "pinned_packages": PINNED[:1]}, "?", "1 held", "yesterday"),
        ({"pinned_packages": []}, "?", "-", "?"),
    ],
)
def test_newer_result_keys_fill_the_toolkit_holds_and_checked_columns(
    tmp_path: Path, new_keys: dict[str, Any], toolkit: str, holds: str, checked: str
) -> None:
    result = {**host_result("gpu-01", "Ubuntu 20.04.6 LTS"), **new_keys}
    (tmp_path / "gpu-01.json").write_text(json.dumps(result))
    (row,) = load_rows(tmp_path, PINS)
    assert (row.cells["toolkit"], row.cells["holds"], row.cells["checked"]) == (
        toolkit,
        holds,
        checked,
    )


def test_docker_column_says_none_without_an_answering_daemon(tmp_path: Path) -> None:
    result = host_result("gpu-01", "Ubuntu 20.04.6 LTS", docker_info=None)
    (tmp_path / "gpu-01.json").write_text(json.dumps(result))
    (row,) = load_rows(tmp_path, PINS)
    assert (row.cells["docker"], row.cells["runtime"], row.state) == ("none", "no docker", "broken")


def test_identical_problems_are_listed_once_with_their_hosts(tmp_path: Path) -> None:
    failed_run = {
        "command": "docker run --rm --gpus all tensorflow/tensorflow:2.9.0-gpu nvidia-smi -L",
        "exit_status": 125,
        "output": "docker: Error response from daemon: unknown.\n",
    }
    for host in ("gpu-06", "gpu-05"):
        result = host_result(host, "Ubuntu 20.04.6 LTS", container_gpu_run=failed_run)
        (tmp_path / f"{host}.json").write_text(json.dumps(result))
    (tmp_path / "gpu-01.json").write_text(json.dumps(host_result("gpu-01", "Ubuntu 20.04.6 LTS")))
    rows = load_rows(tmp_path, PINS)
    markdown = render_markdown(rows, PINS, GENERATED_AT)
    assert markdown.split("Problems:\n\n")[1] == (
        "- BROKEN at container, 2 hosts: \\`docker run --rm --gpus all "
        "tensorflow/tensorflow:2.9.0-gpu nvidia-smi -L\\` failed with exit status 125 — fix: "
        "read the output above; check \\`docker info\\` and journalctl -u docker\n"
        "  - gpu-05 (seen: docker: Error response from daemon: unknown.)\n"
        "  - gpu-06 (seen: docker: Error response from daemon: unknown.)\n"
    )
    page = render_html(rows, PINS, GENERATED_AT)
    assert page.count("BROKEN at container") == 1
    assert (
        "<code>docker run --rm --gpus all tensorflow/tensorflow:2.9.0-gpu nvidia-smi -L</code> "
        "failed with exit status 125"
    ) in page
    assert '<a href="#host-gpu-05.json">gpu-05</a>' in page
    assert '<a href="#host-gpu-06.json">gpu-06</a>' in page
    assert "`" not in page


def test_code_spans_are_escaped_code_elements() -> None:
    assert code_spans("run `docker info <x>` & `journalctl`") == (
        "run <code>docker info &lt;x&gt;</code> &amp; <code>journalctl</code>"
    )
    assert code_spans("no code <b>") == "no code &lt;b&gt;"


def test_counts_say_host_or_hosts(tmp_path: Path) -> None:
    (tmp_path / "gpu-01.json").write_text(json.dumps(host_result("gpu-01", "Ubuntu 20.04.6 LTS")))
    (row,) = load_rows(tmp_path, PINS)
    assert totals_text([row]) == "1 host: 1 OK"
    assert totals_text([row, row]) == "2 hosts: 2 OK"
    assert totals_text([]) == "0 hosts: no result files"


@pytest.mark.parametrize(
    ("page", "prefix"),
    [
        ("results/fleet-report.html", ""),
        ("fleet-report.html", "results/"),
        ("reports/today/fleet-report.html", "../../results/"),
    ],
)
def test_result_links_are_relative_to_the_page(tmp_path: Path, page: str, prefix: str) -> None:
    assert results_link_prefix(tmp_path / "results", tmp_path / page) == prefix


def test_markdown_marks_drift_and_escapes_host_values(results_dir: Path) -> None:
    markdown = render_markdown(load_rows(results_dir, PINS), PINS, GENERATED_AT)
    rows = markdown_rows(markdown)
    assert "**8.1.0** (drift)" in rows["gpu-02 DRIFT"]
    assert "**460.32.03** (drift)" in rows["gpu-03 DRIFT"]
    assert "(drift)" not in rows["gpu-01"]
    assert "<script>" not in markdown
    assert rows["&lt;script&gt;alert(1)&lt;/script&gt;"] == (
        "| &lt;script&gt;alert(1)&lt;/script&gt; | Debian \\| 12 &amp; co | 470.182.03 | 11.2 "
        "| 8.1.1 | default runc, nvidia registered | ? | 28.0.0-rc.1 "
        "| 1x &lt;script&gt;alert(1)&lt;/script&gt;, 1x \\`V100\\` \\| 16GB SXM2 | not run | - | - "
        "| ? | (unverified) | ? |"
    )
    # every table row has exactly the header's number of unescaped cell separators
    separators = {
        len(re.findall(r"(?<!\\)\|", line))
        for line in markdown.splitlines()
        if line.startswith("|")
    }
    assert separators == {16}
    assert markdown.splitlines()[0] == (
        "Fleet report of 2026-11-03 02:14:05 UTC (pinned: driver 470.182.03, CUDA 11.2, "
        "cuDNN 8.1.1). 5 hosts: 1 broken · 1 unverified · 1 unreadable · 2 OK · 2 drifted."
    )
    assert [line.split(" |")[0] for line in markdown.splitlines() if line.startswith("| ")][1:] == [
        "| gpu-03 DRIFT",
        "| &lt;script&gt;alert(1)&lt;/script&gt;",
        "| gpu-04",
        "| gpu-01",
        "| gpu-02 DRIFT",
    ]
    assert markdown.split("Problems:\n\n")[1] == (
        "- BROKEN at driver, 1 host: driver 460.32.03 instead of 470.182.03 — fix: install "
        "driver 470.182.03 (re-run gpufleet) and reboot\n"
        "  - gpu-03 (seen: 460.32.03; 1 more check in its result file)\n"
        "- UNVERIFIED at framework, 1 host: smoke test reported: smoke test not run\n"
        "  - &lt;script&gt;alert(1)&lt;/script&gt;\n"
        "- UNREADABLE result file, 1 host: Expecting property name enclosed in double quotes: "
        "line 1 column 20 (char 19)\n"
        "  - gpu-04\n"
    )


def test_html_escapes_values_and_highlights_drift(results_dir: Path) -> None:
    page = render_html(load_rows(results_dir, PINS), PINS, GENERATED_AT)
    assert "<script>" not in page
    assert '<td><a href="hostile.json">&lt;script&gt;alert(1)&lt;/script&gt;</a></td>' in page
    assert "<td>1x &lt;script&gt;alert(1)&lt;/script&gt;, 1x `V100` | 16GB\nSXM2</td>" in page
    assert "Debian | 12 &amp; co" in page
    assert re.search(
        r'<tr id="host-gpu-02.json" class="ok drift"><td><a href="gpu-02.json">gpu-02</a></td>'
        r'.*?<td class="drift">8\.1\.0 <span class="pin">\(pinned 8\.1\.1\)</span></td>',
        page,
    )
    assert '<tr id="host-gpu-01.json" class="ok"><td><a href="gpu-01.json">gpu-01</a></td>' in page
    assert '<tr id="host-gpu-04.json" class="unreadable"><td>' in page
    assert '<tr id="host-gpu-03.json" class="broken drift"><td>' in page
    assert "Generated 2026-11-03 02:14:05 UTC. Pinned: driver 470.182.03" in page
    assert (
        '<p class="counts">5 hosts:\n  <span class="broken count">1 broken</span> · \n'
        '  <span class="unverified count">1 unverified</span> · \n'
        '  <span class="unreadable count">1 unreadable</span> · \n'
        '  <span class="ok count">2 OK</span> · \n'
        '  <span class="drift count">2 drifted</span>\n</p>'
    ) in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained: no external assets


class PageTables(HTMLParser):
    """The elements a page opens, and each table row as (its class, [(cell class, cell text)])."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[str] = []
        self.rows: list[tuple[str | None, list[tuple[str | None, str]]]] = []
        self.cell: tuple[str | None, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(tag)
        if tag == "tr":
            self.rows.append((dict(attrs).get("class"), []))
        elif tag in ("th", "td"):
            self.cell = (dict(attrs).get("class"), [])

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell[1].append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self.cell is not None:
            self.rows[-1][1].append((self.cell[0], "".join(self.cell[1])))
            self.cell = None


def test_html_shows_host_markup_as_text_in_the_tables_cells(tmp_path: Path) -> None:
    healthy = host_result("gpu-01", "Ubuntu 22.04.4 LTS")
    healthy_smi = healthy["facts"]["nvidia_smi"]
    hostile_gpus = [{**gpu, "name": "<script>alert(1)</script>"} for gpu in healthy_smi["gpus"]]
    hostile = host_result(
        "<script>alert(1)</script>",
        "Debian GNU/Linux 12 (bookworm)",
        nvidia_smi={**healthy_smi, "driver_version": "470.161.03", "gpus": hostile_gpus},
    )
    for name, result in (("gpu-01", healthy), ("hostile", hostile)):
        (tmp_path / f"{name}.json").write_text(json.dumps(result))

    page = render_html(load_rows(tmp_path, PINS), PINS)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page.lower()
    tables = PageTables()
    tables.feed(page)
    tables.close()
    assert "script" not in tables.elements
    assert tables.rows == [
        (
            None,
            [
                (None, "Host"),
                (None, "OS"),
                (None, "Driver"),
                (None, "CUDA"),
                (None, "cuDNN"),
                (None, "Container runtime"),
                (None, "Container toolkit"),
                (None, "Docker"),
                (None, "GPUs"),
                (None, "TensorFlow"),
                (None, "matmul ms per GPU"),
                (None, "DCGM diagnostic"),
                (None, "Holds"),
                (None, "Broken layer"),
                (None, "Checked"),
            ],
        ),
        (
            "broken drift",
            [
                (None, "<script>alert(1)</script>"),
                (None, "Debian GNU/Linux 12 (bookworm)"),
                ("drift", "470.161.03 (pinned 470.182.03)"),
                (None, "11.2"),
                (None, "8.1.1"),
                (None, "default runc, nvidia registered"),
                (None, "?"),
                (None, "28.0.0-rc.1"),
                (None, "2x <script>alert(1)</script>"),
                (None, "2.9.0 pass"),
                (None, "0: 0.41, 1: 0.41"),
                (None, "-"),
                (None, "?"),
                (None, "driver"),
                (None, "?"),
            ],
        ),
        (
            "ok",
            [
                (None, "gpu-01"),
                (None, "Ubuntu 22.04.4 LTS"),
                (None, "470.182.03"),
                (None, "11.2"),
                (None, "8.1.1"),
                (None, "default runc, nvidia registered"),
                (None, "?"),
                (None, "28.0.0-rc.1"),
                (None, "2x Tesla V100-SXM2-16GB"),
                (None, "2.9.0 pass"),
                (None, "0: 0.41, 1: 0.41"),
                (None, "-"),
                (None, "?"),
                (None, "-"),
                (None, "?"),
            ],
        ),
    ]


def report(*arguments: str) -> Result:
    """`gpufleet report ARGUMENTS`, run in-process."""
    return CliRunner().invoke(main, ["report", *arguments])


def test_cli_writes_both_reports(results_dir: Path, tmp_path: Path) -> None:
    html_path, markdown_path = tmp_path / "out" / "fleet.html", tmp_path / "out" / "fleet.md"
    html_path.parent.mkdir()
    result = report(
        str(results_dir), *PIN_ARGUMENTS, "--html", str(html_path), "--markdown", str(markdown_path)
    )
    assert result.exit_code == 0, result.output
    page = html_path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert '<a href="../gpu-01.json">gpu-01</a>' in page  # the results folder is above the page
    assert "| gpu-01 |" in markdown_path.read_text()


def test_cli_prints_markdown_without_output_paths(results_dir: Path) -> None:
    result = report(str(results_dir), *PIN_ARGUMENTS)
    assert result.exit_code == 0
    assert "| gpu-03 DRIFT |" in result.stdout
    assert result.stderr == "5 hosts: 1 broken · 1 unverified · 1 unreadable · 2 OK · 2 drifted\n"
    missing = report(str(results_dir / "missing"), *PIN_ARGUMENTS)
    assert missing.exit_code == 2
    assert "does not exist" in missing.stderr


def changed_result(keys: tuple[str | int, ...], value: Any) -> str:
    """gpu-09's result file with the value at ``keys`` (a path into it) replaced."""
    result = host_result("gpu-09", "Ubuntu 20.04.6 LTS")
    parent: Any = result
    for key in keys[:-1]:
        parent = parent[key]
    parent[keys[-1]] = value
    return json.dumps(result)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (
            '{"host": "gpu-09", ',
            "Expecting property name enclosed in double quotes: line 1 column 20 (char 19)",
        ),
        (b"\xff\xfe{}", "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
        ('["gpu-09"]', "a list, not an object"),
        ('"gpu-09"', "a string, not an object"),
        ("5", "a number, not an object"),
        ("null", "null, not an object"),
        ('{"layers": 5}', "no host"),
        (changed_result(("host",), 9), "host is a number, not a string"),
        (changed_result(("facts",), []), "facts is a list, not an object"),
        (changed_result(("verdict",), "ok"), "verdict is a string, not an object"),
        (
            changed_result(("verdict", "state"), "fine"),
            "state is 'fine', not one of ok, broken, unverified",
        ),
        (changed_result(("facts", "nvidia_smi"), "470"), "nvidia_smi is a string, not an object"),
        (
            changed_result(("facts", "nvidia_smi", "driver_version"), 470),
            "driver_version is a number, not a string",
        ),
        (
            changed_result(("facts", "nvidia_smi", "gpus"), ["V100"]),
            "gpus lists a string, not an object",
        ),
        (changed_result(("facts", "nvidia_smi", "gpus"), [{}]), "no name"),
        (
            changed_result(("facts", "cuda", "toolkits", "11.2"), "11.2"),
            "11.2 is a string, not an object",
        ),
        (
            changed_result(("facts", "docker_info", "runtimes"), ["nvidia"]),
            "runtimes is a list, not an object",
        ),
        (changed_result(("smoke_test", "checks", 0, "ms"), "fast"), "ms is a string, not a number"),
        (
            changed_result(("smoke_test", "tensorflow_version"), 2.9),
            "tensorflow_version is a number, not a string",
        ),
    ],
)
def test_a_result_file_of_another_shape_is_a_row_saying_why(
    tmp_path: Path, content: str | bytes, reason: str
) -> None:
    (tmp_path / "gpu-01.json").write_text(json.dumps(host_result("gpu-01", "Ubuntu 20.04.6 LTS")))
    bad = tmp_path / "gpu-09.json"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        bad.write_text(content)
    unreadable, good = load_rows(tmp_path, PINS)
    assert (good.cells["host"], good.state, good.cells["gpus"]) == (
        "gpu-01",
        "ok",
        "2x Tesla V100-SXM2-16GB",
    )
    assert (unreadable.cells["host"], unreadable.state) == ("gpu-09", "unreadable")
    assert unreadable.problem == Problem("unreadable", "result file", reason, None)
    markdown = render_markdown([unreadable, good], PINS)
    assert "| gpu-01 | Ubuntu 20.04.6 LTS | 470.182.03 | 11.2 | 8.1.1 |" in markdown
    assert (
        "| gpu-09 | ? | ? | ? | ? | ? | ? | ? | ? | ? | ? | ? | ? | (unreadable) | ? |" in markdown
    )
    assert f"- UNREADABLE result file, 1 host: {reason}\n  - gpu-09\n" in markdown
    page = render_html([unreadable, good], PINS)
    assert '<tr id="host-gpu-09.json" class="unreadable"><td><a href="gpu-09.json">gpu-09' in page
    assert '<tr id="host-gpu-01.json" class="ok"><td><a href="gpu-01.json">gpu-01' in page


def test_a_result_path_that_cannot_be_read_is_a_row_saying_why(tmp_path: Path) -> None:
    (tmp_path / "gpu-01.json").write_text(json.dumps(host_result("gpu-01", "Ubuntu 20.04.6 LTS")))
    (tmp_path / "gpu-09.json").mkdir()
    unreadable, good = load_rows(tmp_path, PINS)
    assert (good.cells["host"], good.state) == ("gpu-01", "ok")
    assert (unreadable.cells["host"], unreadable.state) == ("gpu-09", "unreadable")
    reason = f"[Errno 21] Is a directory: '{tmp_path}/gpu-09.json'"
    assert unreadable.problem == Problem("unreadable", "result file", reason, None)


def test_the_dcgm_cell_names_failed_tests_and_each_gpus_figures() -> None:
    # The PCIe figures of the real DCGM 3.3.9 V100 run (dcgmi-diag-r2-v-v100-pcie-16gb-...).
    pcie = {"status": "fail", "figures": {"host_to_gpu_gb_s": 13.13, "gpu_to_host_gb_s": 12.37}}
    diag = {
        "level": 2,
        "summary": {"pcie": {"status": "fail"}, "software": {"status": "pass"}},
        "gpus": [
            {"gpu": 0, "tests": {"software": {"status": "pass", "figures": {}}, "pcie": pcie}}
        ],
    }
    assert dcgm_text(diag) == "L2 FAIL: pcie; 0: H2D 13.13 GB/s, D2H 12.37 GB/s"
    assert dcgm_text({"level": 1, "summary": {"software": {"status": "pass"}}, "gpus": []}) == (
        "L1 pass"
    )
    assert dcgm_text(None) == "-"
