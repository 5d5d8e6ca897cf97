from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gpufleet.facts.gpu_host import (
    SECTION_FACTS,
    GpuHostState,
    combined_command,
    fact_value,
    parse_os_release,
    parse_python_version,
    section_commands,
    split_sections,
)
from gpufleet.facts.systemd_units import parse_unit_commands
from tests.unit.test_facts_support import fixture_text, run_fact, run_lines


def test_sections_survive_failures_and_missing_newlines() -> None:
    command = combined_command(
        {
            "first": "printf 'no newline'",
            "failing": "echo partial; exit 3",
            "stderr": "echo visible; echo hidden >&2",
            "blank_end": "printf 'a\\n\\n'",
            "empty": "true",
        },
    )
    status, lines = run_lines(command)
    assert status == 0
    assert split_sections(lines) == {
        "first": ["no newline"],
        "failing": ["partial"],
        "stderr": ["visible"],
        "blank_end": ["a", ""],
        "empty": [],
    }


def test_os_release_this_machine() -> None:
    _, lines = run_lines("cat /etc/os-release")
    fields = parse_os_release(lines)
    assert fields["ID"] == run_lines('. /etc/os-release; echo "$ID"')[1][0]
    assert fields["PRETTY_NAME"] == run_lines('. /etc/os-release; echo "$PRETTY_NAME"')[1][0]


def test_python_version() -> None:
    assert parse_python_version(["Python 3.11.2"]) == "3.11.2"
    assert parse_python_version([]) is None


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_combined_state_equals_individual_facts(tmp_path: Path, shell: str) -> None:
    daemon_json = tmp_path / "daemon.json"
    daemon_json.write_text(fixture_text("daemon-json-for-linux-1531.json"))
    link = tmp_path / "link"
    link.symlink_to("/lib/systemd/system/example.service")
    # A toolkit as NVIDIA's runfile and cuDNN archive leave it (the files' contents aside).
    toolkit = tmp_path / "cuda-11.2"
    (toolkit / "targets/x86_64-linux/lib").mkdir(parents=True)
    (toolkit / "lib64").symlink_to("targets/x86_64-linux/lib")
    (toolkit / "include").mkdir()
    (toolkit / "bin").mkdir()
    (toolkit / "bin/cuda-uninstaller").write_bytes(b"")
    (toolkit / "version.json").write_text(
        '{\n   "cuda" : {\n      "name" : "CUDA SDK",\n      "version" : "11.2.2"\n   }\n}\n'
    )
    (toolkit / "include/cudnn_version.h").write_text(
        "#define CUDNN_MAJOR 8\n#define CUDNN_MINOR 1\n#define CUDNN_PATCHLEVEL 1\n"
    )
    (toolkit / "lib64/libcudart.so.11.2.152").write_bytes(b"")
    (toolkit / "lib64/libcudart.so.11.0").symlink_to("libcudart.so.11.2.152")
    (toolkit / "lib64/libcudnn.so.8.1.1").write_bytes(b"")
    (toolkit / "lib64/libcudnn.so.8").symlink_to("libcudnn.so.8.1.1")
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / ("ab" * 32)).write_bytes(b"")
    (artifacts / "subfolder").mkdir()
    arguments: dict[str, Any] = {
        "packages": ["bash", "coreutils", "gpufleet-no-such-package"],
        "repository_locations": ["developer.download.nvidia.com/compute/cuda/repos"],
        "offered_packages": ["bash", "gpufleet-no-such-package"],
        "daemon_json_path": str(daemon_json),
        "files": [str(daemon_json), str(tmp_path / "absent")],
        "symlinks": [str(link), str(daemon_json), str(tmp_path / "absent")],
        "units": ["ssh.service"],
        "toolkit_path": str(toolkit),
        "image": "tensorflow/tensorflow:2.9.0-gpu",
        "artifact_folder": str(artifacts),
        "users": ["root", "gpufleet-no-such-user"],
        "mig": True,
    }

    state = run_fact(GpuHostState(), shell, **arguments)
    assert isinstance(state, dict)
    assert set(state) == set(SECTION_FACTS)

    commands = section_commands(**arguments)
    for name, fact in SECTION_FACTS.items():
        status, lines = run_lines(commands[name], shell)
        # pyinfra's systemd facts fail where systemd is not running (a container): their section
        # is then empty, the facts' default, as for a host without systemd.
        assert status == 0 or fact.requires_command() == "systemctl", name
        assert state[name] == fact_value(fact, lines), name

    # Spot checks against this machine's own view, independent of the facts' parsing.
    assert state["kernel_release"] == run_lines("uname -r")[1][0]
    assert state["dockerd_installed"] is (run_lines("command -v dockerd")[0] == 0)
    assert state["docker_daemon_config"]["config"]["default-runtime"] == "nvidia"
    assert set(state["packages"]) == {"bash", "coreutils"}
    # apt offers what its lists hold (none in a container without `apt-get update`).
    assert set(state["apt_offers"]) <= {"bash"}
    assert set(state["file_digests"]) == {str(daemon_json)}
    assert state["toolkit_files"] == {
        "cuda_version": "11.2.2",
        "runfile_uninstaller": True,
        "cudnn_version": "8.1.1",
        "libraries": {
            "libcudart.so.11.0": "libcudart.so.11.2.152",
            "libcudart.so.11.2.152": None,
            "libcudnn.so.8": "libcudnn.so.8.1.1",
            "libcudnn.so.8.1.1": None,
        },
    }
    assert state["host_artifacts"] == ["ab" * 32]
    assert state["tensorflow_image_id"] is None  # no docker here
    assert state["symlink_targets"] == {
        str(link): "/lib/systemd/system/example.service",
        str(daemon_json): None,
    }


def test_unit_main_commands_reads_the_running_process() -> None:
    # `systemctl show -p MainPID` then /proc/<pid>/cmdline, NULs as spaces (Ubuntu's unit).
    output = [
        "nvidia-persistenced.service\t/usr/bin/nvidia-persistenced --user nvidia-persistenced "
        "--no-persistence-mode --verbose ",
        "no tab: ignored",
    ]
    assert parse_unit_commands(output) == {
        "nvidia-persistenced.service": "/usr/bin/nvidia-persistenced --user nvidia-persistenced "
        "--no-persistence-mode --verbose"
    }
