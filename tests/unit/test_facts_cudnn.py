from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.facts.cudnn import CUDNN_HEADERS, CudnnVersion, parse_cudnn_version_header
from tests.unit.test_facts_support import fixture_lines, fixture_text, run_fact, run_lines


@pytest.mark.parametrize(
    ("fixture", "version"),
    [("cudnn_version-8.1.1-grep.txt", "8.1.1"), ("cudnn_version-9.5.0-grep.txt", "9.5.0")],
)
def test_parse_header(fixture: str, version: str) -> None:
    assert parse_cudnn_version_header(fixture_text(fixture)) == version


def test_fact_processes_the_define_lines() -> None:
    # The command keeps only the three version defines, the form process() receives.
    defines = fixture_lines("cudnn_version-8.1.1-grep.txt")[:3]
    assert CudnnVersion().process(defines) == "8.1.1"


def test_header_without_defines() -> None:
    assert parse_cudnn_version_header("#define CUDNN_VERSION 8101\n") is None


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_command_matches_this_machine(shell: str) -> None:
    present = [header for header in CUDNN_HEADERS if run_lines(f"test -f {header}")[0] == 0]
    expected = parse_cudnn_version_header(Path(present[0]).read_text()) if present else None
    assert run_fact(CudnnVersion(), shell) == expected
