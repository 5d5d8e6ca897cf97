"""
The fleet report's page as a person sees it: headless Chromium (Debian's chromium package, which
`bash .ci/setup` installs) renders it; the test checks the DOM for the counts, the order, the
grouped problems and the drift, and keeps a screenshot at tests/artifacts/fleet-report.png.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from gpufleet.fleet_report import load_rows, render_html, results_link_prefix
from tests.unit.test_fleet_report import PINS, host_result

SCREENSHOT_COPY = Path(__file__).parents[1] / "artifacts" / "fleet-report.png"
GENERATED_AT = datetime(2026, 11, 3, 2, 14, 5, tzinfo=timezone.utc)
# `docker run` failing in a way the diagnosis has no entry for: its problem and fix quote
# commands in backticks.
FAILED_CONTAINER_RUN = {
    "command": "docker run --rm --gpus all tensorflow/tensorflow:2.9.0-gpu nvidia-smi -L",
    "exit_status": 125,
    "output": "docker: Error response from daemon: failed to create task for container: unknown.\n",
}
PINNED_PACKAGES = [
    {"name": "cuda-drivers", "version": "470.182.03-1", "held": True},
    {"name": "cuda-toolkit-11-2", "version": "11.2.2-1", "held": True},
    {"name": "libcudnn8", "version": "8.1.1.33-1+cuda11.2", "held": True},
]


def newer_result(result: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``result`` with the keys newer gpufleet versions write, and ``changes``."""
    return {
        **result,
        "generated_at": "2026-11-03T01:58:12+00:00",
        "gpufleet_version": "0.1.0",
        "container_toolkit_version": "1.17.8",
        "pinned_packages": PINNED_PACKAGES,
        **changes,
    }


def write_results(results_dir: Path) -> None:
    """Three broken hosts (two with one problem, one with drift), unverified, unreadable, ok."""
    healthy = host_result("gpu-01", "Ubuntu 20.04.6 LTS")
    healthy_smi = healthy["facts"]["nvidia_smi"]
    old_driver = host_result(
        "gpu-03", "Ubuntu 18.04.6 LTS", nvidia_smi={**healthy_smi, "driver_version": "460.32.03"}
    )
    unheld = [{**package, "held": False} for package in PINNED_PACKAGES[:2]] + PINNED_PACKAGES[2:]
    results = {
        "gpu-01": newer_result(healthy),
        "gpu-02": host_result(
            "gpu-02", "Ubuntu 20.04.6 LTS", container_gpu_run=FAILED_CONTAINER_RUN
        ),
        "gpu-03": newer_result(old_driver, pinned_packages=unheld),
        "gpu-04": host_result("gpu-04", "Ubuntu 22.04.4 LTS", smoke_test=None),
        "gpu-05": host_result(
            "gpu-05", "Ubuntu 20.04.6 LTS", container_gpu_run=FAILED_CONTAINER_RUN
        ),
    }
    results_dir.mkdir(parents=True)
    for name, result in results.items():
        (results_dir / f"{name}.json").write_text(json.dumps(result))
    (results_dir / "gpu-09.json").write_text('{"host": "gpu-09", ')  # cut off mid-write


@dataclass
class Element:
    tag: str
    attributes: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The text within, whitespace runs as one space."""
        texts = (child if isinstance(child, str) else child.text for child in self.children)
        return " ".join("".join(texts).split())

    @property
    def classes(self) -> set[str]:
        return set(self.attributes.get("class", "").split())

    def all(self, tag: str, css_class: str | None = None) -> list[Element]:
        """The elements within, document order, of ``tag`` (and with ``css_class``)."""
        found = []
        for child in self.children:
            if isinstance(child, Element):
                if child.tag == tag and (css_class is None or css_class in child.classes):
                    found.append(child)
                found += child.all(tag, css_class)
        return found

    def one(self, tag: str, css_class: str | None = None) -> Element:
        (element,) = self.all(tag, css_class)
        return element


class DomTree(HTMLParser):
    """Chromium's --dump-dom output as Elements: it closes every element that is not void."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}

    def __init__(self) -> None:
        super().__init__()
        self.document = Element("#document", {})
        self.open = [self.document]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.open[-1].children.append(element)
        if tag not in self.VOID:
            self.open.append(element)

    def handle_endtag(self, tag: str) -> None:
        if self.open[-1].tag == tag:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        self.open[-1].children.append(data)


def chromium(page: Path, option: str, profile: Path) -> str:
    """Chromium's standard output after it loads ``page`` with ``option``."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail(
            "chromium is not installed: `bash .ci/setup` installs it (Debian's chromium package)"
        )
    run = subprocess.run(
        [
            executable,
            "--headless",
            "--no-sandbox",  # as root, as the suite runs in CI
            "--disable-gpu",
            "--window-size=1400,1000",
            f"--user-data-dir={profile}",
            option,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, f"chromium {option} failed:\n{run.stderr}"
    return run.stdout


@pytest.fixture(scope="module")
def page_dom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Element, Path]:
    """The page's DOM as Chromium built it, and the page; the screenshot kept on the way."""
    report_dir = tmp_path_factory.getbasetemp() / "fleet-report"
    results_dir = report_dir / "results"
    write_results(results_dir)
    page = report_dir / "fleet-report.html"
    rows = load_rows(results_dir, PINS)
    page.write_text(
        render_html(rows, PINS, GENERATED_AT, results_link_prefix(results_dir, page)),
        encoding="utf-8",
    )
    screenshot = report_dir / "fleet-report.png"
    chromium(page, f"--screenshot={screenshot}", report_dir / "chromium-profile")
    assert screenshot.stat().st_size > 0
    SCREENSHOT_COPY.parent.mkdir(exist_ok=True)
    shutil.copyfile(screenshot, SCREENSHOT_COPY)
    print(f"fleet report screenshot: {screenshot} (copied to {SCREENSHOT_COPY})")
    tree = DomTree()
    tree.feed(chromium(page, "--dump-dom", report_dir / "chromium-profile"))
    tree.close()
    return tree.document, page


def test_counts_at_the_top_carry_their_states_colour_class(page_dom: tuple[Element, Path]) -> None:
    document, _ = page_dom
    counts = document.one("p", "counts")
    assert counts.text == "6 hosts: 3 broken · 1 unverified · 1 unreadable · 1 OK · 1 drifted"
    assert [(count.classes, count.text) for count in counts.all("span", "count")] == [
        ({"broken", "count"}, "3 broken"),
        ({"unverified", "count"}, "1 unverified"),
        ({"unreadable", "count"}, "1 unreadable"),
        ({"ok", "count"}, "1 OK"),
        ({"drift", "count"}, "1 drifted"),
    ]
    assert document.one("p", "generated").text == (
        "Generated 2026-11-03 02:14:05 UTC. Pinned: driver 470.182.03, CUDA 11.2, cuDNN 8.1.1."
    )


def test_rows_come_broken_first_and_link_to_each_hosts_result_file(
    page_dom: tuple[Element, Path],
) -> None:
    document, page = page_dom
    rows = document.one("tbody").all("tr")
    assert [(row.attributes["class"], row.all("td")[0].text) for row in rows] == [
        ("broken", "gpu-02"),
        ("broken drift", "gpu-03"),
        ("broken", "gpu-05"),
        ("unverified", "gpu-04"),
        ("unreadable", "gpu-09"),
        ("ok", "gpu-01"),
    ]
    links = [row.one("a").attributes["href"] for row in rows]
    assert links[:2] == ["results/gpu-02.json", "results/gpu-03.json"]
    assert all((page.parent / link).is_file() for link in links)


def test_new_columns_show_toolkit_docker_holds_and_when_checked(
    page_dom: tuple[Element, Path],
) -> None:
    document, _ = page_dom
    titles = [cell.text for cell in document.one("thead").all("th")]
    cells = {
        row.all("td")[0].text: dict(zip(titles, (cell.text for cell in row.all("td")), strict=True))
        for row in document.one("tbody").all("tr")
    }
    assert {title: cells["gpu-01"][title] for title in titles[6:8] + titles[11:]} == {
        "Container toolkit": "1.17.8",
        "Docker": "28.0.0-rc.1",
        "DCGM diagnostic": "-",
        "Holds": "all 3 held",
        "Broken layer": "-",
        "Checked": "2026-11-03 01:58:12 UTC, gpufleet 0.1.0",
    }
    assert cells["gpu-03"]["Holds"] == "2 of 3 not held: cuda-drivers, cuda-toolkit-11-2"
    # gpu-02 wrote its result before gpufleet recorded these.
    assert [cells["gpu-02"][title] for title in ("Container toolkit", "Holds", "Checked")] == [
        "?",
        "?",
        "?",
    ]


def test_drift_is_marked_on_a_broken_row(page_dom: tuple[Element, Path]) -> None:
    document, _ = page_dom
    broken_drifted = document.one("tbody").all("tr")[1]
    drifted = broken_drifted.all("td", "drift")
    assert [cell.text for cell in drifted] == ["460.32.03 (pinned 470.182.03)"]


def test_identical_problems_are_listed_once_with_the_hosts_they_hit(
    page_dom: tuple[Element, Path],
) -> None:
    document, _ = page_dom
    problems = document.one("ol", "problems").all("li")
    groups = [item for item in problems if item.all("ul")]
    assert [(group.attributes["class"], group.all("p")[0].text) for group in groups] == [
        (
            "broken",
            "BROKEN at container, 2 hosts: docker run --rm --gpus all "
            "tensorflow/tensorflow:2.9.0-gpu nvidia-smi -L failed with exit status 125",
        ),
        ("broken", "BROKEN at driver, 1 host: driver 460.32.03 instead of 470.182.03"),
        ("unverified", "UNVERIFIED at framework, 1 host: smoke test reported: smoke test not run"),
        (
            "unreadable",
            "UNREADABLE result file, 1 host: "
            "Expecting property name enclosed in double quotes: line 1 column 20 (char 19)",
        ),
    ]
    container = groups[0]
    assert [code.text for code in container.all("code")] == [
        "docker run --rm --gpus all tensorflow/tensorflow:2.9.0-gpu nvidia-smi -L",
        "docker info",
    ]
    assert [
        (host.one("a").attributes["href"], host.text) for host in container.one("ul").all("li")
    ] == [
        (
            "#host-gpu-02.json",
            "gpu-02 (seen: docker: Error response from daemon: failed to create task for "
            "container: unknown.)",
        ),
        (
            "#host-gpu-05.json",
            "gpu-05 (seen: docker: Error response from daemon: failed to create task for "
            "container: unknown.)",
        ),
    ]
    assert groups[1].one("ul").text == "gpu-03 (seen: 460.32.03; 1 more check in its result file)"
    assert document.all("tr", "broken")[0].attributes["id"] == "host-gpu-02.json"


def test_page_shows_no_backticks(page_dom: tuple[Element, Path]) -> None:
    document, _ = page_dom
    assert "`" not in document.one("body").text
