from __future__ import annotations

import json
from pathlib import Path

import pytest

from facts.docker import (
    DockerDaemonConfig,
    DockerInfo,
    parse_daemon_json,
    parse_docker_info_json,
)
from tests.unit.test_facts_support import fixture_lines, fixture_text, run_fact, run_lines


@pytest.mark.parametrize(
    "fixture", ["daemon-json-for-linux-1531.json", "daemon-json-toolkit-653.json"]
)
def test_daemon_json_real_files(fixture: str) -> None:
    info = parse_daemon_json(fixture_text(fixture))
    assert info["parse_error"] is None
    assert info["config"] == json.loads(fixture_text(fixture))
    assert info["config"] is not None
    assert info["config"]["default-runtime"] == "nvidia"


def test_daemon_json_error_names_line_and_column() -> None:
    # The real nvidia-ctk file with its closing brace lost.
    lines = fixture_lines("daemon-json-toolkit-653.json")[:-1]
    info = parse_daemon_json("\n".join(lines))
    assert info["config"] is None
    assert info["parse_error"] is not None
    assert info["parse_error"].startswith(f"line {len(lines)} column ")


def test_daemon_json_not_an_object() -> None:
    assert parse_daemon_json("[]")["parse_error"] == "expected a JSON object, got list"


@pytest.mark.parametrize(("content", "shell"), [("", "sh"), (" \n", "bash"), ("{}", "sh")])
def test_empty_file_is_an_empty_config_like_dockerd(
    tmp_path: Path, content: str, shell: str
) -> None:
    path = tmp_path / "daemon.json"
    path.write_text(content)
    info = run_fact(DockerDaemonConfig(), shell, path=str(path))
    assert info == {"exists": True, "config": {}, "parse_error": None}


def test_daemon_json_command_reads_real_file(tmp_path: Path) -> None:
    path = tmp_path / "it's daemon.json"
    # nvidia-ctk writes no final newline; the content must still come through whole.
    path.write_text(fixture_text("daemon-json-toolkit-653.json").rstrip("\n"))
    info = run_fact(DockerDaemonConfig(), path=str(path))
    assert info == parse_daemon_json(fixture_text("daemon-json-toolkit-653.json"))


def test_absent_daemon_json(tmp_path: Path) -> None:
    info = run_fact(DockerDaemonConfig(), path=str(tmp_path / "missing.json"))
    assert info == {"exists": False, "config": None, "parse_error": None}


def test_docker_info_fragment() -> None:
    info = parse_docker_info_json(fixture_text("docker-info-json-desktop-28.2.2-fragment.json"))
    assert info == {
        "server_version": "28.2.2",
        "runtimes": {
            "io.containerd.runc.v2": {"path": "runc"},
            "nvidia": {"path": "nvidia-container-runtime"},
            "runc": {"path": "runc"},
        },
        "default_runtime": "runc",
    }


def test_docker_info_without_daemon_is_none() -> None:
    assert parse_docker_info_json(fixture_text("docker-info-json-daemon-down.txt")) is None
    assert fixture_lines("docker-info-json-daemon-down.stderr.txt")[0].startswith(
        "Cannot connect to the Docker daemon"
    )


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_docker_info_command_runs_here(shell: str) -> None:
    status, output = run_lines("docker info --format '{{json .}}' 2>/dev/null")
    expected = parse_docker_info_json("\n".join(output)) if output else None
    assert run_fact(DockerInfo(), shell) == expected
    if status != 0:
        assert expected is None
