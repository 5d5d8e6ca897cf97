"""
gpufleet/stack/dcgm.py (which DCGM for which driver and GPUs, the refusals, the diag levels) and
gpufleet/deploys/dcgm.py in pyinfra's operation fixture style: each case gives the deploy's
arguments, the facts it reads and exactly the commands each of its operations yields.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

import pytest
from pyinfra.api.deploy import add_deploy

from gpufleet.deploys.dcgm import dcgm
from gpufleet.diagnosis.evidence import Expectations
from gpufleet.diagnosis.hardware import check_dcgm_diag
from gpufleet.facts.dcgm import parse_dcgmi_diag
from gpufleet.operations.packages import apt_get, transaction
from gpufleet.stack.dcgm import (
    DCGM_PINS,
    DIAG_LEVELS,
    DcgmDiagInfo,
    DiagTestResult,
    dcgm_packages,
    dcgm_problems,
    diag_problems,
    replaced_dcgm_packages,
    worst_status,
)
from gpufleet.stack.gpus import Architecture
from tests.fakehost import OperationCase, fake_host_commands
from tests.unit.test_facts_support import fixture_lines

CORE, CUDA12, CUDA13 = (
    "datacenter-gpu-manager-4-core",
    "datacenter-gpu-manager-4-cuda12",
    "datacenter-gpu-manager-4-cuda13",
)
DCGM3 = "datacenter-gpu-manager"
PIN_4 = "1:4.5.3-*"
BOTH_PLUGINS = {CORE: PIN_4, CUDA12: PIN_4, CUDA13: PIN_4}


@pytest.mark.parametrize(
    ("branch", "architectures", "packages"),
    [
        # R470: DCGM 3's one package, at its real version (epoch, no revision).
        ("470", [Architecture.TURING], {DCGM3: "1:3.3.9"}),
        ("535", [Architecture.AMPERE], {CORE: PIN_4, CUDA12: PIN_4}),
        ("535", [Architecture.VOLTA], {CORE: PIN_4, CUDA12: PIN_4}),
        ("580", [Architecture.HOPPER], {CORE: PIN_4, CUDA13: PIN_4}),
        # CUDA 13 left the GPUs before Turing: their plugins are CUDA 12's (and the PCIe test
        # needs CUDA 13's too, NVIDIA/DCGM#254).
        ("580", [Architecture.VOLTA], BOTH_PLUGINS),
        ("580", [Architecture.PASCAL, Architecture.AMPERE], BOTH_PLUGINS),
        # No GPU gpufleet knows: the branch's own CUDA major.
        ("580", [], {CORE: PIN_4, CUDA13: PIN_4}),
    ],
)
def test_packages_per_driver_branch_and_gpus(
    branch: str, architectures: list[Architecture], packages: dict[str, str]
) -> None:
    assert dcgm_packages(branch, architectures) == packages


def test_pins_match_the_versions_apt_reports() -> None:
    # dpkg's versions of the real packages (SOURCES.md §6): rebuilds bump the revision.
    assert fnmatchcase("1:4.5.3-1", DCGM_PINS["580"].apt_pattern)
    assert fnmatchcase("1:4.5.3-2", DCGM_PINS["535"].apt_pattern)
    assert not fnmatchcase("1:4.6.0-1", DCGM_PINS["535"].apt_pattern)
    assert DCGM_PINS["470"].apt_pattern == "1:3.3.9"
    with pytest.raises(ValueError, match="no DCGM release for driver branch 550"):
        dcgm_packages("550", [])


def test_refusals_name_the_key_the_value_and_what_works() -> None:
    assert dcgm_problems("580", 1) == []
    assert dcgm_problems("550", 3) == [
        "gpu_dcgm = True: gpufleet pins DCGM for driver branches R470, R535, R580, and this "
        "host's driver is R550; set nvidia_driver_branch to one of '470', '535', '580', or "
        "gpu_dcgm to false"
    ]
    (level,) = dcgm_problems("535", 4)
    assert level.startswith("gpu_dcgm_diag_level = 4 is not a level gpufleet runs; use 1 (")
    assert "3 (software, pcie, memory, diagnostic," in level


def test_diag_levels_grow() -> None:
    assert DIAG_LEVELS[1].tests == ("software",)
    # 2: PCIe bandwidth and memory; 3: GEMM (diagnostic), stress, power, memory bandwidth.
    assert set(DIAG_LEVELS[2].tests) == {"software", "pcie", "memory"}
    assert set(DIAG_LEVELS[3].tests) > set(DIAG_LEVELS[2].tests) | {"diagnostic"}


def test_replaced_packages_are_the_other_majors() -> None:
    installed = [DCGM3, CUDA12, CORE, "datacenter-gpu-manager-exporter-x", "docker.io"]
    wanted = dcgm_packages("580", [Architecture.HOPPER])
    assert replaced_dcgm_packages(installed, wanted) == [DCGM3, CUDA12]
    assert replaced_dcgm_packages([DCGM3], dcgm_packages("470", [])) == []


def test_worst_status_and_problems() -> None:
    assert worst_status(["pass", "skip", "warn"]) == "warn"
    assert worst_status([]) == "skip"
    info = parse_dcgmi_diag(fixture_lines("dcgmi-diag-r1-j-gb10-dcgm-4.2.3.json"))
    assert info is not None
    problems = diag_problems(info, expected_gpus=2)
    assert problems[0] == "dcgmi diag covered 1 GPU(s), 2 expected"
    assert problems[1].startswith("GPU 0 software: fail (Persistence Mode: Persistence mode")


# --- the deploy ------------------------------------------------------------------------------

LOCK = 600
APT = apt_get(LOCK)
HOPPER_580 = {"driver_branch": "580", "architectures": [Architecture.HOPPER], "lock_timeout": LOCK}
V100_580 = {**HOPPER_580, "architectures": [Architecture.VOLTA]}
AMPERE_535 = {**HOPPER_580, "driver_branch": "535", "architectures": [Architecture.AMPERE]}


def installed(version: str, held: bool = True) -> dict[str, Any]:
    return {"version": version, "held": held, "installed": True}


def install(*specs: str) -> str:
    names = " ".join(spec.split("=")[0] for spec in specs)
    quoted = " ".join(f"'{spec}'" for spec in specs)
    return transaction(
        [
            f"{APT} update",
            f"{APT} install --no-install-recommends --allow-downgrades"
            f" --allow-change-held-packages {quoted}",
            f"apt-mark hold {names}",
        ],
        LOCK,
    )


START = ["systemctl start nvidia-dcgm.service", "systemctl enable nvidia-dcgm.service"]
RUNNING = {"SystemdStatus": {"nvidia-dcgm.service": True}}
ENABLED = {"SystemdEnabled": {"nvidia-dcgm.service": True}}
CONVERGED_580 = {CORE: installed("1:4.5.3-1"), CUDA13: installed("1:4.5.3-1")}

DEPLOY_CASES = [
    OperationCase(
        id="bare-host-installs-holds-and-starts",
        args=HOPPER_580,
        facts={"DebPackageStates": {}, "SystemdStatus": {}, "SystemdEnabled": {}},
        commands=[
            install(f"{CORE}={PIN_4}", f"{CUDA13}={PIN_4}"),
            "systemctl daemon-reload",
            *START,
        ],
    ),
    OperationCase(
        id="pre-turing-on-r580-gets-both-plugins",
        args=V100_580,
        facts={"DebPackageStates": {}, "SystemdStatus": {}, "SystemdEnabled": {}},
        commands=[
            install(f"{CORE}={PIN_4}", f"{CUDA12}={PIN_4}", f"{CUDA13}={PIN_4}"),
            "systemctl daemon-reload",
            *START,
        ],
    ),
    OperationCase(
        id="converged-changes-nothing",
        args=HOPPER_580,
        facts={"DebPackageStates": CONVERGED_580, **RUNNING, **ENABLED},
        commands=[],
    ),
    OperationCase(
        # A hold alone changes no binary: nv-hostengine keeps running.
        id="unheld-at-the-pin-is-held-only",
        args=HOPPER_580,
        facts={
            "DebPackageStates": {**CONVERGED_580, CUDA13: installed("1:4.5.3-1", held=False)},
            **RUNNING,
            **ENABLED,
        },
        commands=[f"apt-mark hold {CUDA13}"],
    ),
    OperationCase(
        # R470 to R535: DCGM 3 goes (4's core conflicts with it), 4 comes, the engine restarts.
        id="dcgm-3-replaced-by-dcgm-4",
        args=AMPERE_535,
        facts={"DebPackageStates": {DCGM3: installed("1:3.3.9")}, **RUNNING, **ENABLED},
        commands=[
            transaction([f"{APT} purge --allow-change-held-packages {DCGM3}"], LOCK),
            install(f"{CORE}={PIN_4}", f"{CUDA12}={PIN_4}"),
            "systemctl daemon-reload",
            "systemctl restart nvidia-dcgm.service",
        ],
    ),
    OperationCase(
        # R535 to R580 on Hopper: CUDA 12's plugins would hold the core at their version.
        id="other-cuda-plugins-removed",
        args=HOPPER_580,
        facts={
            "DebPackageStates": {**CONVERGED_580, CUDA12: installed("1:4.5.3-1")},
            **RUNNING,
            **ENABLED,
        },
        commands=[transaction([f"{APT} purge --allow-change-held-packages {CUDA12}"], LOCK)],
    ),
]


def deploy_commands(args: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    """Every command the deploy's operations yield on a @fake host whose facts are ``facts``."""
    planned = fake_host_commands(lambda state: add_deploy(state, dcgm, **args), facts)
    return [command for operation in planned for command in operation.commands]


@pytest.mark.parametrize("case", DEPLOY_CASES, ids=lambda case: case.id)
def test_deploy(case: OperationCase) -> None:
    assert deploy_commands(case.args, case.facts) == case.commands


def test_verification_fails_a_gpu_whose_diagnostic_fails() -> None:
    expectations = Expectations(
        "535.288.01", "11.2", "8.1", expected_gpu_count=1, dcgm_diag_level=2
    )
    passing: DiagTestResult = {"status": "pass", "warnings": [], "info": [], "figures": {}}
    failing: DiagTestResult = {
        "status": "fail",
        "warnings": ["GPU 0 PCIe bandwidth below threshold"],
        "info": [],
        "figures": {"host_to_gpu_gb_s": 2.1},
    }
    info: DcgmDiagInfo = {
        "level": 2,
        "dcgm_version": "4.5.3",
        "driver_version": "535.288.01",
        "hostengine_reachable": True,
        "gpus": [{"gpu": 0, "device_id": "1db1", "tests": {"software": passing, "pcie": failing}}],
        "summary": {"software": passing, "pcie": failing},
        "errors": [],
        "exit_status": 226,
    }
    check = check_dcgm_diag({"host": "gpu-01", "dcgm_diag": info}, expectations)
    assert check["name"] == "DCGM diagnostic, level 2 (software, pcie, memory; about 2 minutes)"
    assert (check["passed"], check["evidence"]) == (False, "GPU 0: fail")
    assert check["problem"] == "GPU 0 pcie: fail (GPU 0 PCIe bandwidth below threshold)"
    info["gpus"][0]["tests"]["pcie"] = passing
    info["summary"]["pcie"] = passing
    assert check_dcgm_diag({"host": "gpu-01", "dcgm_diag": info}, expectations)["passed"] is True
    missing = check_dcgm_diag({"host": "gpu-01", "dcgm_diag": None}, expectations)
    assert missing["problem"] == "dcgmi is not installed (gpu_dcgm): DCGM's packages are missing"
