"""
fleet_report: rows from a results folder, drift highlighting, escaping, and the CLI.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, cast

import pytest
from click.testing import CliRunner, Result

from gpufleet.cli import main
from gpufleet.diagnosis import Expectations, HostEvidence, diagnose
from gpufleet.fleet_report import load_rows, render_html, render_markdown

FIXTURES = Path(__file__).parents[1] / "fixtures" / "tf"
PINS = Expectations(driver_version="470.182.03", cuda_version="11.2", cudnn_version="8.1.1")
PIN_ARGUMENTS = ["--driver", "470.182.03", "--cuda", "11.2", "--cudnn", "8.1.1"]


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


def test_rows_carry_each_hosts_values(results_dir: Path) -> None:
    rows = {row.cells["host"]: row for row in load_rows(results_dir, PINS)}
    assert sorted(rows) == ["<script>alert(1)</script>", "gpu-01", "gpu-02", "gpu-03", "gpu-04"]
    healthy = rows["gpu-01"]
    assert healthy.cells == {
        "host": "gpu-01",
        "os": "Ubuntu 20.04.6 LTS",
        "driver": "470.182.03",
        "cuda": "11.2",
        "cudnn": "8.1.1",
        "runtime": "default runc, nvidia registered",
        "gpus": "2x Tesla V100-SXM2-16GB",
        "tensorflow": "2.9.0 pass",
        "matmul_ms": "0: 0.41, 1: 0.41",
        "broken_layer": "-",
    }
    assert healthy.state == "ok" and not healthy.drift
    assert rows["gpu-02"].drift == {"cudnn"}
    assert rows["gpu-03"].drift == {"driver"}
    assert (rows["gpu-03"].state, rows["gpu-03"].cells["broken_layer"]) == ("broken", "driver")
    assert rows["gpu-04"].state == "unreadable"
    hostile = rows["<script>alert(1)</script>"].cells
    assert hostile["gpus"] == "1x <script>alert(1)</script>, 1x `V100` | 16GB\nSXM2"
    assert hostile["tensorflow"] == "not run"
    assert hostile["broken_layer"] == "(unverified)"


def test_markdown_marks_drift_and_escapes_host_values(results_dir: Path) -> None:
    markdown = render_markdown(load_rows(results_dir, PINS), PINS)
    rows = markdown_rows(markdown)
    assert "**8.1.0** (drift)" in rows["gpu-02 DRIFT"]
    assert "**460.32.03** (drift)" in rows["gpu-03 DRIFT"]
    assert "(drift)" not in rows["gpu-01"]
    assert "<script>" not in markdown
    assert rows["&lt;script&gt;alert(1)&lt;/script&gt;"] == (
        "| &lt;script&gt;alert(1)&lt;/script&gt; | Debian \\| 12 &amp; co | 470.182.03 | 11.2 "
        "| 8.1.1 | default runc, nvidia registered "
        "| 1x &lt;script&gt;alert(1)&lt;/script&gt;, 1x \\`V100\\` \\| 16GB SXM2 | not run | - "
        "| (unverified) |"
    )
    assert (
        "- &lt;script&gt;alert(1)&lt;/script&gt;: UNVERIFIED at framework: "
        "smoke test reported: smoke test not run"
    ) in markdown.splitlines()
    # every table row has exactly the header's number of unescaped cell separators
    separators = {
        len(re.findall(r"(?<!\\)\|", line))
        for line in markdown.splitlines()
        if line.startswith("|")
    }
    assert separators == {11}
    assert "5 hosts: 2 ok, 1 broken, 1 unverified, 1 unreadable, 2 drifted" in markdown


def test_html_escapes_values_and_highlights_drift(results_dir: Path) -> None:
    page = render_html(load_rows(results_dir, PINS), PINS)
    assert "<script>" not in page
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>" in page
    assert "<td>1x &lt;script&gt;alert(1)&lt;/script&gt;, 1x `V100` | 16GB\nSXM2</td>" in page
    assert "Debian | 12 &amp; co" in page
    assert re.search(
        r'<tr class="ok drift"><td>gpu-02</td>.*?<td class="drift"[^>]*>8\.1\.0</td>', page
    )
    assert re.search(r'<tr class="ok"><td>gpu-01</td>', page)
    assert re.search(r'<tr class="unreadable"><td>gpu-04</td>', page)
    assert re.search(r'<tr class="broken drift"><td>gpu-03</td>', page)
    assert "<li>gpu-03: BROKEN at driver: driver 460.32.03 instead of 470.182.03" in page
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
                (None, "GPUs"),
                (None, "TensorFlow"),
                (None, "matmul ms per GPU"),
                (None, "Broken layer"),
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
                (None, "2x Tesla V100-SXM2-16GB"),
                (None, "2.9.0 pass"),
                (None, "0: 0.41, 1: 0.41"),
                (None, "-"),
            ],
        ),
        (
            "broken drift",
            [
                (None, "<script>alert(1)</script>"),
                (None, "Debian GNU/Linux 12 (bookworm)"),
                ("drift", "470.161.03"),
                (None, "11.2"),
                (None, "8.1.1"),
                (None, "default runc, nvidia registered"),
                (None, "2x <script>alert(1)</script>"),
                (None, "2.9.0 pass"),
                (None, "0: 0.41, 1: 0.41"),
                (None, "driver"),
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
    assert html_path.read_text().startswith("<!DOCTYPE html>")
    assert "| gpu-01 |" in markdown_path.read_text()


def test_cli_prints_markdown_without_output_paths(results_dir: Path) -> None:
    result = report(str(results_dir), *PIN_ARGUMENTS)
    assert result.exit_code == 0
    assert "| gpu-03 DRIFT |" in result.stdout
    assert result.stderr.startswith("5 hosts:")
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
    good, unreadable = load_rows(tmp_path, PINS)
    assert (good.cells["host"], good.state, good.cells["gpus"]) == (
        "gpu-01",
        "ok",
        "2x Tesla V100-SXM2-16GB",
    )
    assert (unreadable.cells["host"], unreadable.state) == ("gpu-09", "unreadable")
    assert unreadable.summary == f"gpu-09.json: unreadable result file: {reason}"
    markdown = render_markdown([good, unreadable], PINS)
    assert "| gpu-01 | Ubuntu 20.04.6 LTS | 470.182.03 | 11.2 | 8.1.1 |" in markdown
    assert "| gpu-09 | ? | ? | ? | ? | ? | ? | ? | ? | (unreadable) |" in markdown
    assert f"- gpu-09.json: unreadable result file: {reason}" in markdown
    page = render_html([good, unreadable], PINS)
    assert '<tr class="unreadable"><td>gpu-09</td>' in page
    assert '<tr class="ok"><td>gpu-01</td>' in page


def test_a_result_path_that_cannot_be_read_is_a_row_saying_why(tmp_path: Path) -> None:
    (tmp_path / "gpu-01.json").write_text(json.dumps(host_result("gpu-01", "Ubuntu 20.04.6 LTS")))
    (tmp_path / "gpu-09.json").mkdir()
    good, unreadable = load_rows(tmp_path, PINS)
    assert (good.cells["host"], good.state) == ("gpu-01", "ok")
    assert (unreadable.cells["host"], unreadable.state) == ("gpu-09", "unreadable")
    reason = f"[Errno 21] Is a directory: '{tmp_path}/gpu-09.json'"
    assert unreadable.summary == f"gpu-09.json: unreadable result file: {reason}"
