from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpufleet.facts.docker import (
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
    config = parse_daemon_json(fixture_text(fixture))
    assert config == json.loads(fixture_text(fixture))
    assert config["default-runtime"] == "nvidia"


def test_daemon_json_error_names_line_and_column() -> None:
    # The real nvidia-ctk file with its closing brace lost.
    lines = fixture_lines("daemon-json-toolkit-653.json")[:-1]
    with pytest.raises(ValueError, match=f"^line {len(lines)} column "):
        parse_daemon_json("\n".join(lines))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("[]", "expected a JSON object, got list"),
        # Go's encoding/json (dockerd) has no NaN or Infinity; Python's json accepts both.
        ('{"max-concurrent-downloads": NaN}', "NaN is not JSON"),
        ('{"max-concurrent-downloads": Infinity}', "Infinity is not JSON"),
        ('\ufeff{"log-driver": "json-file"}', "it starts with a UTF-8 byte order mark"),
        ('{"runtimes": "oops"}', '"runtimes" must be an object of runtime objects'),
        ('{"runtimes": {"crun": "/usr/bin/crun"}}', '"runtimes" must be an object of runtime'),
    ],
    ids=["list", "nan", "infinity", "bom", "runtimes-string", "runtime-string"],
)
def test_daemon_json_that_dockerd_would_not_read_is_refused(content: str, reason: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_daemon_json(content)
    assert str(raised.value).startswith(reason)


def test_daemon_json_directory_and_record_of_gpufleets_keys(tmp_path: Path) -> None:
    (tmp_path / "daemon.json").mkdir()
    record = tmp_path / "keys.json"
    record.write_text('[["default-shm-size"], ["log-opts", "max-size"]]\n')
    info = run_fact(
        DockerDaemonConfig(), path=str(tmp_path / "daemon.json"), managed_keys_path=str(record)
    )
    assert info == {
        "exists": True,
        "config": None,
        "parse_error": "it is a directory, not a file",
        "managed_keys": [("default-shm-size",), ("log-opts", "max-size")],
    }


@pytest.mark.parametrize(("content", "shell"), [("", "sh"), (" \n", "bash"), ("{}", "sh")])
def test_empty_file_is_an_empty_config_like_dockerd(
    tmp_path: Path, content: str, shell: str
) -> None:
    path = tmp_path / "daemon.json"
    path.write_text(content)
    info = run_fact(DockerDaemonConfig(), shell, path=str(path))
    assert info == {"exists": True, "config": {}, "parse_error": None, "managed_keys": []}


def test_daemon_json_command_reads_real_file(tmp_path: Path) -> None:
    path = tmp_path / "it's daemon.json"
    # nvidia-ctk writes no final newline; the content must still come through whole.
    path.write_text(fixture_text("daemon-json-toolkit-653.json").rstrip("\n"))
    info = run_fact(DockerDaemonConfig(), path=str(path))
    assert isinstance(info, dict)
    assert info["config"] == parse_daemon_json(fixture_text("daemon-json-toolkit-653.json"))


def test_absent_daemon_json(tmp_path: Path) -> None:
    info = run_fact(DockerDaemonConfig(), path=str(tmp_path / "missing.json"))
    assert info == {"exists": False, "config": None, "parse_error": None, "managed_keys": []}


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
        "containers_running": 0,
        "live_restore": False,
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
