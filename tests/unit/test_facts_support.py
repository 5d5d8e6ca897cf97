"""Helpers shared by the fact tests: fixture files and running fact commands for real."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pyinfra.api import FactBase

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "facts"


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text()


def fixture_lines(name: str) -> list[str]:
    """A fixture as pyinfra hands output to ``process``: lines without their newlines."""
    return fixture_text(name).splitlines()


def run_lines(command: str, shell: str = "sh") -> tuple[int, list[str]]:
    """Run ``command`` as pyinfra does (``sh -c``) and return its status and stdout lines."""
    result = subprocess.run([shell, "-c", command], capture_output=True, text=True, check=False)
    return result.returncode, result.stdout.splitlines()


def run_fact(fact: FactBase, shell: str = "sh", **arguments: object) -> object:
    """Run a fact's command here and process it the way pyinfra does; the command must succeed."""
    status, lines = run_lines(str(fact.command(**arguments)), shell)
    assert status == 0, f"{type(fact).__name__} command failed with {status}"
    return fact.process(lines) if lines else fact.default()


def test_fixture_lines_match_pyinfra_line_splitting() -> None:
    # pyinfra strips only the newline; a last line without one still counts.
    assert fixture_lines("nvcc-version-11.2.txt")[-1] == "Build cuda_11.2.r11.2/compiler.29618528_0"
    assert run_lines("printf 'a\\n\\nb'") == (0, ["a", "", "b"])
