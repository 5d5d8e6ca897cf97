from __future__ import annotations

import pytest

from gpufleet.facts.cuda import CudaToolkits, parse_cuda_toolkits, parse_nvcc_release
from tests.unit.test_facts_support import fixture_text, run_fact, run_lines


@pytest.mark.parametrize(
    ("fixture", "release"),
    [("nvcc-version-11.2.txt", "11.2"), ("nvcc-version-13.0.txt", "13.0")],
)
def test_parse_nvcc_release(fixture: str, release: str) -> None:
    assert parse_nvcc_release(fixture_text(fixture)) == release


def test_parse_nvcc_release_without_banner() -> None:
    assert parse_nvcc_release("sh: 1: /usr/local/cuda-11.2/bin/nvcc: not found") is None


def test_parse_toolkit_lines() -> None:
    release_line = fixture_text("nvcc-version-11.2.txt").splitlines()[3]
    info = parse_cuda_toolkits(
        [
            f"toolkit\t/usr/local/cuda-11.2\t{release_line}",
            "toolkit\t/usr/local/cuda-12.2\t",
            "default\t/usr/local/cuda-11.2",
        ],
    )
    assert info == {
        "toolkits": {
            "11.2": {"path": "/usr/local/cuda-11.2", "nvcc_release": "11.2"},
            "12.2": {"path": "/usr/local/cuda-12.2", "nvcc_release": None},
        },
        "default_path": "/usr/local/cuda-11.2",
    }


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_command_matches_this_machine(shell: str) -> None:
    _, directories = run_lines('for d in /usr/local/cuda-*; do [ -d "$d" ] && echo "$d"; done')
    status, default = run_lines("readlink -e /usr/local/cuda")
    info = run_fact(CudaToolkits(), shell)
    assert isinstance(info, dict)
    assert sorted(toolkit["path"] for toolkit in info["toolkits"].values()) == sorted(directories)
    assert info["default_path"] == (default[0] if status == 0 else None)
    for version, toolkit in info["toolkits"].items():
        nvcc = f"{toolkit['path']}/bin/nvcc"
        nvcc_status, banner = run_lines(f"{nvcc} --version")
        expected = parse_nvcc_release("\n".join(banner)) if nvcc_status == 0 else None
        assert toolkit["nvcc_release"] == expected
        assert toolkit["path"].endswith(f"cuda-{version}")
