"""The stand-in repositories verify, resolve and install like NVIDIA's and Debian's.

Real apt (in a private directory, empty dpkg status) runs against the built tree served over
HTTP on 127.0.0.1. The first run downloads the Debian subset into the shared cache
(testbed.standin_repo.default_cache_dir()); later runs reuse it.
"""

from __future__ import annotations

import ctypes
import http.server
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from gpufleet.facts.dcgm import DCGMI_EXIT_MARKER, parse_dcgmi_diag
from gpufleet.stack.catalog import DriverChoice, KernelModules
from gpufleet.stack.catalog import driver_packages as gpufleet_driver_pins
from gpufleet.stack.dcgm import DCGM_PINS, DIAG_LEVELS, DcgmDiagInfo
from gpufleet.stack.dcgm import dcgm_packages as gpufleet_dcgm_pins
from gpufleet.stack.gpus import Architecture
from gpufleet.stack.repositories import DriverNaming
from testbed.os_mirror import mirror_path
from testbed.repos import RepoTree, build_repos, default_cache_dir
from testbed.rootfs import os_release
from testbed.standin_repo import (
    CONTAINER_REPO_PATH,
    CUDA_DIRECTORIES,
    CUDA_DIRECTORY_CONTENTS,
    CUDA_REPO_PATH,
    ArchiveKey,
    PrivateApt,
    StandinPackage,
    build_debs,
    build_nvidia_part,
    cuda_key_path,
    cuda_repo_path,
    external_dependencies,
    index_flat_repo,
    nvidia_standin_packages,
)
from tests.unit.local_http import serving
from tests.unit.test_facts_support import fixture_lines, fixture_text

# The OS mirror the whole-tree tests resolve the stand-ins against (as before: Debian 12).
OS_RELEASE = "debian12"

# Verbatim lines of the real 470.182.03 table (nvidia-reference/nvidia-smi.txt, SAMPLE 1 header
# and SAMPLE 5 rows: a Tesla T4 on 470.182.03).
REAL_470_HEADER = "| NVIDIA-SMI 470.182.03   Driver Version: 470.182.03   CUDA Version: 11.4     |"
REAL_T4_ROWS = (
    "|   0  Tesla T4            Off  | 00000000:00:1E.0 Off |                    0 |",
    "| N/A   34C    P8     9W /  70W |      0MiB / 15109MiB |      0%      Default |",
)
# Header of a real --query-gpu CSV (nvidia-reference/nvidia-smi-query.csv, SAMPLE A).
REAL_QUERY_HEADER = "index, name, uuid, driver_version, memory.total [MiB], mig.mode.current"
# Element paths of the real `nvidia-smi -q -x` (nvidia-reference/nvidia-smi-q-x.raw.xml).
REAL_XML_PATHS = (
    "driver_version",
    "cuda_version",
    "attached_gpus",
    "gpu",
    "gpu/product_name",
    "gpu/uuid",
    "gpu/fb_memory_usage/total",
    "gpu/fb_memory_usage/used",
    "gpu/persistence_mode",
    "gpu/mig_mode/current_mig",
    "gpu/pci/pci_bus_id",
    "gpu/processes",
)
# nvcc --version of CUDA 11.2.2 (nvidia-reference/nvcc-version.txt).
REAL_NVCC_11_2_BANNER = """\
nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2021 NVIDIA Corporation
Built on Sun_Feb_14_21:12:58_PST_2021
Cuda compilation tools, release 11.2, V11.2.152
Build cuda_11.2.r11.2/compiler.29618528_0
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def repo_tree() -> RepoTree:
    return build_repos(default_cache_dir(), [OS_RELEASE])


@pytest.fixture(scope="session")
def repo_url(repo_tree: RepoTree) -> Iterator[str]:
    handler = partial(QuietHandler, directory=str(repo_tree.root))
    with serving(handler) as address:
        yield f"http://{address}/"


def source_lines(key: Path, base_url: str, *paths: str) -> list[str]:
    return [f"deb [signed-by={key}] {base_url}{path} /" for path in paths]


@pytest.fixture(scope="session")
def apt(repo_tree: RepoTree, repo_url: str, tmp_path_factory: pytest.TempPathFactory) -> PrivateApt:
    apt = PrivateApt(
        tmp_path_factory.mktemp("apt"),
        source_lines(
            repo_tree.key_path,
            repo_url,
            mirror_path(os_release(OS_RELEASE)),
            CUDA_REPO_PATH,
            CONTAINER_REPO_PATH,
        ),
    )
    apt.run("update")
    return apt


def test_update_verifies_every_repository_without_warnings(apt: PrivateApt) -> None:
    result = apt.run("update")
    output = result.stdout + result.stderr
    assert "W:" not in output and "E:" not in output
    assert output.count("InRelease") >= 3


def test_update_rejects_a_tampered_release(repo_tree: RepoTree, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(repo_tree.root / CUDA_REPO_PATH, repo)
    for name in ("InRelease", "Release"):
        signed = repo / name
        signed.write_text(signed.read_text().replace("Label: NVIDIA CUDA", "Label: NVIDIA CUDX"))
    tampered = PrivateApt(tmp_path / "apt", source_lines(repo_tree.key_path, "file://", str(repo)))
    result = tampered.run("update", check=False)
    assert result.returncode != 0
    assert "BADSIG" in result.stdout + result.stderr
    assert tampered.run("install", "--simulate", "cuda-drivers-470", check=False).returncode != 0


def test_unpinned_cuda_drivers_470_pulls_the_newest_driver(apt: PrivateApt) -> None:
    versions = apt.simulate_install("cuda-drivers-470")
    assert versions["cuda-drivers-470"] == "470.239.06-1"
    assert versions["nvidia-driver-470"] == "470.239.06-0ubuntu1"


def test_pinning_cuda_drivers_470_alone_does_not_pin_the_driver(apt: PrivateApt) -> None:
    versions = apt.simulate_install("cuda-drivers-470=470.182.03-1")
    assert versions["cuda-drivers-470"] == "470.182.03-1"
    assert versions["nvidia-driver-470"] == "470.239.06-0ubuntu1"


def test_gpufleets_driver_pins_resolve_to_one_release(apt: PrivateApt) -> None:
    # apt resolves (>=) dependencies to the newest build first: gpufleet pins every package of
    # the family, and real apt must then install exactly that release.
    pins = gpufleet_driver_pins(
        DriverChoice(
            DriverNaming.UBUNTU, "470", "470.182.03", KernelModules.PROPRIETARY, headless=False
        )
    )
    versions = apt.simulate_install(*(f"{name}={pattern}" for name, pattern in pins.items()))
    assert pins.keys() <= versions.keys()
    assert {versions[name] for name in pins} == {"470.182.03-1", "470.182.03-0ubuntu1"}
    assert versions["cuda-drivers-470"] == "470.182.03-1"
    assert versions["nvidia-driver-470"] == "470.182.03-0ubuntu1"
    assert "dkms" in versions


def test_pinning_part_of_the_driver_family_is_held_broken(apt: PrivateApt) -> None:
    partial = apt.run(
        "install",
        "--simulate",
        "cuda-drivers-470=470.182.03-1",
        "nvidia-driver-470=470.182.03-0ubuntu1",
        check=False,
    )
    assert partial.returncode != 0
    assert "you have held broken packages" in partial.stdout + partial.stderr


def test_unpinned_libcudnn8_picks_the_cuda_12_build(apt: PrivateApt) -> None:
    assert apt.simulate_install("libcudnn8")["libcudnn8"] == "8.9.7.29-1+cuda12.2"
    pinned = apt.simulate_install(
        "libcudnn8=8.1.1.33-1+cuda11.2", "libcudnn8-dev=8.1.1.33-1+cuda11.2"
    )
    assert pinned["libcudnn8"] == pinned["libcudnn8-dev"] == "8.1.1.33-1+cuda11.2"


def test_cuda_11_2_drags_the_newest_driver_and_the_toolkit_does_not(apt: PrivateApt) -> None:
    everything = apt.simulate_install("cuda-11-2")
    assert everything["cuda-drivers"] == "550.144.03-0ubuntu1"
    assert everything["nvidia-driver-550"] == "550.144.03-0ubuntu1"
    toolkit = apt.simulate_install("cuda-toolkit-11-2=11.2.2-1")
    assert not [name for name in toolkit if "driver" in name]
    assert toolkit["cuda-cudart-11-2"] == "11.2.152-1"
    assert toolkit["libcublas-11-2"] == "11.4.1.1043-1"
    assert toolkit["cuda-nvcc-11-2"] == "11.2.152-1"


def test_container_toolkit_pin_needs_base_pinned_and_leaves_the_tools(apt: PrivateApt) -> None:
    # apt takes the newest base as candidate and does not fall back to the (=) one.
    alone = apt.run("install", "--simulate", "nvidia-container-toolkit=1.17.4-1", check=False)
    assert "nvidia-container-toolkit-base (= 1.17.4-1) but 1.18.2-1" in alone.stdout
    versions = apt.simulate_install(
        "nvidia-container-toolkit=1.17.4-1", "nvidia-container-toolkit-base=1.17.4-1"
    )
    assert versions["nvidia-container-toolkit-base"] == "1.17.4-1"
    assert versions["libnvidia-container-tools"] == "1.18.2-1"
    # From 1.18 the toolkit wants its own tools version exactly (commit f0ea60a2).
    pinned = apt.run("install", "--simulate", "nvidia-container-toolkit=1.18.2-1",
                     "libnvidia-container-tools=1.17.8-1", check=False)  # fmt: skip
    assert "libnvidia-container-tools (= 1.18.2-1) but 1.17.8-1" in pinned.stdout


def test_debian_subset_holds_the_full_closure(apt: PrivateApt) -> None:
    versions = apt.simulate_install(
        "docker.io",
        "dkms",
        f"linux-headers-{platform.release()}",
        "nvidia-driver-470",
        "nvidia-container-toolkit",
        "python3",
        "openssh-server",
        "systemd",
    )
    assert {"docker.io", "containerd", "runc", "dkms", "gcc"} <= versions.keys()


def test_cached_tree_is_reused_quickly(repo_tree: RepoTree, tmp_path: Path) -> None:
    started = time.monotonic()
    again = build_repos(default_cache_dir(), [OS_RELEASE])
    assert time.monotonic() - started < 1
    assert again == repo_tree
    shown = subprocess.run(
        ["gpg", "--homedir", str(tmp_path), "--show-keys", "--with-colons", str(again.key_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.findall(r"^fpr:+([0-9A-F]{40}):", shown, re.MULTILINE)[0] == again.key_fingerprint


# --- payloads --------------------------------------------------------------------------------


def unpack(repo_tree: RepoTree, repo_path: str, deb_name: str, target: Path) -> Path:
    subprocess.run(
        ["dpkg-deb", "-x", str(repo_tree.root / repo_path / deb_name), str(target)], check=True
    )
    return target


@pytest.fixture
def nvidia_smi(repo_tree: RepoTree, tmp_path: Path) -> Path:
    root = unpack(
        repo_tree,
        CUDA_REPO_PATH,
        "nvidia-utils-470_470.182.03-0ubuntu1_amd64.deb",
        tmp_path / "root",
    )
    return root / "usr/bin/nvidia-smi"


def run_standin(
    program: Path, tmp_path: Path, config: Mapping[str, object], *arguments: str
) -> subprocess.CompletedProcess[str]:
    """Run a stand-in program on the bus ``config`` with its state under ``tmp_path``."""
    config_path = tmp_path / "gpus.json"
    config_path.write_text(json.dumps(config))
    env = {
        **os.environ,
        "NVIDIA_STANDIN_CONFIG": str(config_path),
        "NVIDIA_STANDIN_STATE_DIR": str(tmp_path / "state"),
        "NVIDIA_STANDIN_RUN_DIR": str(tmp_path / "run"),
    }
    return subprocess.run(
        [str(program), *arguments], env=env, capture_output=True, text=True, check=False
    )


def test_nvidia_smi_table_matches_the_real_470_layout(nvidia_smi: Path, tmp_path: Path) -> None:
    lines = run_standin(nvidia_smi, tmp_path, {"mode": "ok"}).stdout.splitlines()
    assert lines[2] == REAL_470_HEADER
    assert lines[8:10] == list(REAL_T4_ROWS)
    assert {len(line) for line in lines[1:]} == {79}


def test_nvidia_smi_xml_has_the_real_elements(nvidia_smi: Path, tmp_path: Path) -> None:
    config = {
        "mode": "ok",
        "processes": [{"gpu": 0, "pid": 4242, "process_name": "python3", "used_memory_mib": 300}],
    }
    log = ET.fromstring(run_standin(nvidia_smi, tmp_path, config, "-q", "-x").stdout)
    assert [path for path in REAL_XML_PATHS if log.find(path) is None] == []
    assert log.findtext("driver_version") == "470.182.03"
    assert log.findtext("cuda_version") == "11.4"
    assert log.findtext("gpu/fb_memory_usage/total") == "15109 MiB"
    assert log.findtext("gpu/processes/process_info/pid") == "4242"


def test_nvidia_smi_csv_queries(nvidia_smi: Path, tmp_path: Path) -> None:
    config = {
        "mode": "ok",
        "processes": [{"gpu": 0, "pid": 4242, "process_name": "python3", "used_memory_mib": 300}],
    }
    fields = "--query-gpu=index,name,uuid,driver_version,memory.total,mig.mode.current"
    header, row = run_standin(
        nvidia_smi, tmp_path, config, fields, "--format=csv"
    ).stdout.splitlines()
    assert header == REAL_QUERY_HEADER
    assert re.fullmatch(r"0, Tesla T4, GPU-[0-9a-f-]{36}, 470\.182\.03, 15109 MiB, \[N/A\]", row)
    bare = run_standin(nvidia_smi, tmp_path, config, fields, "--format=csv,noheader,nounits")
    assert bare.stdout.split(", ")[4] == "15109"
    apps = run_standin(
        nvidia_smi,
        tmp_path,
        config,
        "--query-compute-apps=pid,process_name,used_memory,gpu_uuid",
        "--format=csv",
    )
    assert apps.stdout.splitlines()[0] == "pid, process_name, used_gpu_memory [MiB], gpu_uuid"
    assert apps.stdout.splitlines()[1].startswith("4242, python3, 300 MiB, GPU-")
    listing = run_standin(nvidia_smi, tmp_path, config, "-L").stdout
    assert re.fullmatch(r"GPU 0: Tesla T4 \(UUID: GPU-[0-9a-f-]{36}\)\n", listing)


def test_nvidia_smi_driver_states(nvidia_smi: Path, tmp_path: Path) -> None:
    no_driver = run_standin(nvidia_smi, tmp_path, {"mode": "no-driver"})
    assert (no_driver.returncode, no_driver.stdout.split(" because")[0]) == (
        9,
        "NVIDIA-SMI has failed",
    )
    state = tmp_path / "state"
    state.mkdir()
    (state / "module-version").write_text("470.141.03\n")
    stale = run_standin(nvidia_smi, tmp_path, {})
    assert stale.returncode == 18
    assert stale.stdout == "Failed to initialize NVML: Driver/library version mismatch\n"
    (state / "module-version").write_text("470.182.03\n")
    assert run_standin(nvidia_smi, tmp_path, {}).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: nvidia-smi -pm refuses other users")
def test_nvidia_smi_persistence_mode(nvidia_smi: Path, tmp_path: Path) -> None:
    enabled = run_standin(nvidia_smi, tmp_path, {"mode": "ok"}, "-pm", "1")
    assert enabled.stdout == (
        "Enabled Legacy persistence mode for GPU 00000000:00:1E.0.\nAll done.\n"
    )
    query = run_standin(
        nvidia_smi,
        tmp_path,
        {"mode": "ok"},
        "--query-gpu=persistence_mode",
        "--format=csv,noheader",
    )
    assert query.stdout == "Enabled\n"


# The real Fabric Manager's console lines (NVIDIA/gpu-operator#544, #610; NVIDIA/nvtrust#128).
REAL_FM_MISMATCH = (
    "fabric manager NVIDIA GPU driver interface version 470.182.03 don't match with driver "
    "version 470.141.03. Please update with matching NVIDIA driver package."
)
REAL_FM_NO_NVSWITCH = (
    "request to query NVSwitch device information from NVSwitch driver failed with "
    "error:WARNING Nothing to do [NV_WARN_NOTHING_TO_DO]"
)
REAL_FM_STARTED = [
    "Connected to 1 node.",
    "Successfully configured all the available NVSwitches to route GPU NVLink traffic. NVLink "
    "Peer-to-Peer support will be enabled once the GPUs are successfully registered with the "
    "NVLink fabric.",
]
HGX_BUS = {
    "gpus": [{"name": "NVIDIA A100-SXM4-80GB", "bus_id": "00000000:07:00.0"}],
    "nvswitches": [{"bus_id": "00000000:C4:00.0", "pci_device_id": "1af1"}],
}


def test_fabricmanager_exists_for_every_driver_release_at_its_version(
    repo_tree: RepoTree, apt: PrivateApt
) -> None:
    for directory in CUDA_DIRECTORIES:
        repo = repo_tree.root / cuda_repo_path(directory)
        for release in CUDA_DIRECTORY_CONTENTS[directory].drivers:
            # NVIDIA dropped the branch from the name with R580.
            name = (
                "nvidia-fabricmanager"
                if int(release.branch) >= 580
                else f"nvidia-fabricmanager-{release.branch}"
            )
            deb = repo / f"{name}_{release.upstream}-1_amd64.deb"
            fields = subprocess.run(
                ["dpkg-deb", "--field", str(deb), "Package", "Version", "Architecture"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.splitlines()
            assert fields == [
                f"Package: {name}",
                f"Version: {release.upstream}-1",
                "Architecture: amd64",
            ]
    # It depends on libc6 only: installing it pulls no driver package in.
    pinned = apt.simulate_install("nvidia-fabricmanager-470=470.182.03-1")
    assert pinned["nvidia-fabricmanager-470"] == "470.182.03-1"
    assert [name for name in pinned if "nvidia" in name] == ["nvidia-fabricmanager-470"]


@pytest.fixture
def fabricmanager(repo_tree: RepoTree, tmp_path: Path) -> Path:
    return unpack(
        repo_tree,
        CUDA_REPO_PATH,
        "nvidia-fabricmanager-470_470.182.03-1_amd64.deb",
        tmp_path / "root",
    )


def run_fabricmanager(
    root: Path, tmp_path: Path, config: Mapping[str, object], loaded_module: str
) -> subprocess.CompletedProcess[str]:
    """Start nv-fabricmanager as its unit does, with its config's log file under ``tmp_path``."""
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "state" / "module-version").write_text(f"{loaded_module}\n")
    fm_config = tmp_path / "fabricmanager.cfg"
    shipped = (root / "usr/share/nvidia/nvswitch/fabricmanager.cfg").read_text()
    fm_config.write_text(
        shipped.replace("/var/log/fabricmanager.log", str(tmp_path / "fabricmanager.log"))
    )
    return run_standin(root / "usr/bin/nv-fabricmanager", tmp_path, config, "-c", str(fm_config))


def test_fabricmanager_ships_the_binary_and_the_forking_unit(fabricmanager: Path) -> None:
    assert os.access(fabricmanager / "usr/bin/nv-fabricmanager", os.X_OK)
    unit = (fabricmanager / "lib/systemd/system/nvidia-fabricmanager.service").read_text()
    assert "\nType=forking\n" in unit
    assert (
        "\nExecStart=/usr/bin/nv-fabricmanager -c /usr/share/nvidia/nvswitch/fabricmanager.cfg\n"
        in unit
    )
    assert "\nPIDFile=/var/run/nvidia-fabricmanager/nv-fabricmanager.pid\n" in unit
    config = (fabricmanager / "usr/share/nvidia/nvswitch/fabricmanager.cfg").read_text()
    assert "\nLOG_FILE_NAME=/var/log/fabricmanager.log\n" in config


def test_fabricmanager_refuses_another_drivers_module(fabricmanager: Path, tmp_path: Path) -> None:
    result = run_fabricmanager(fabricmanager, tmp_path, HGX_BUS, "470.141.03")
    assert (result.returncode, result.stdout) == (1, REAL_FM_MISMATCH + "\n")
    log = (tmp_path / "fabricmanager.log").read_text()
    assert re.fullmatch(rf"\[.+\] \[ERROR\] \[tid \d+\] {re.escape(REAL_FM_MISMATCH)}\n", log)
    assert not (tmp_path / "run").exists()


def test_fabricmanager_without_nvswitch_has_nothing_to_do(
    fabricmanager: Path, tmp_path: Path
) -> None:
    result = run_fabricmanager(fabricmanager, tmp_path, {"gpus": HGX_BUS["gpus"]}, "470.182.03")
    assert (result.returncode, result.stdout) == (1, REAL_FM_NO_NVSWITCH + "\n")
    assert not (tmp_path / "run").exists()


def test_fabricmanager_forks_and_logs_success(fabricmanager: Path, tmp_path: Path) -> None:
    result = run_fabricmanager(fabricmanager, tmp_path, HGX_BUS, "470.182.03")
    pid = int((tmp_path / "run/nv-fabricmanager.pid").read_text())
    try:
        assert result.returncode == 0
        assert result.stdout.splitlines() == REAL_FM_STARTED
        assert os.path.exists(f"/proc/{pid}")
        log = (tmp_path / "fabricmanager.log").read_text().splitlines()
        assert [line.split(f"] [tid {pid}] ", 1)[1] for line in log] == REAL_FM_STARTED
        assert all("] [INFO] [tid" in line for line in log)
    finally:
        os.kill(pid, signal.SIGTERM)


def test_nvcc_prints_the_real_11_2_banner(repo_tree: RepoTree, tmp_path: Path) -> None:
    root = unpack(repo_tree, CUDA_REPO_PATH, "cuda-nvcc-11-2_11.2.152-1_amd64.deb", tmp_path)
    result = subprocess.run(
        [str(root / "usr/local/cuda-11.2/bin/nvcc"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == REAL_NVCC_11_2_BANNER


@pytest.mark.parametrize(
    ("deb_name", "library", "soname", "version"),
    [
        (
            "libnvidia-compute-470_470.182.03-0ubuntu1_amd64.deb",
            "usr/lib/x86_64-linux-gnu/libcuda.so.470.182.03",
            "libcuda.so.1",
            "470.182.03",
        ),
        (
            "libcudnn8_8.1.1.33-1+cuda11.2_amd64.deb",
            "usr/lib/x86_64-linux-gnu/libcudnn.so.8.1.1",
            "libcudnn.so.8",
            "8.1.1.33",
        ),
        (
            "cuda-cudart-11-2_11.2.152-1_amd64.deb",
            "usr/local/cuda-11.2/targets/x86_64-linux/lib/libcudart.so.11.2.152",
            "libcudart.so.11.0",
            "11.2.152",
        ),
    ],
)
def test_libraries_are_loadable_with_the_real_soname(
    repo_tree: RepoTree, tmp_path: Path, deb_name: str, library: str, soname: str, version: str
) -> None:
    root = unpack(repo_tree, CUDA_REPO_PATH, deb_name, tmp_path)
    dynamic = subprocess.run(
        ["readelf", "-d", str(root / library)], capture_output=True, text=True, check=True
    ).stdout
    assert f"Library soname: [{soname}]" in dynamic
    assert os.readlink(root / library.rsplit("/", 1)[0] / soname) == library.rsplit("/", 1)[1]
    loaded = ctypes.CDLL(str(root / library))
    loaded.gpufleet_standin_version.restype = ctypes.c_char_p
    assert loaded.gpufleet_standin_version() == version.encode()


def test_container_runtime_adds_the_hook_and_hands_over_to_runc(
    repo_tree: RepoTree, tmp_path: Path
) -> None:
    root = unpack(
        repo_tree,
        CONTAINER_REPO_PATH,
        "nvidia-container-toolkit-base_1.17.4-1_amd64.deb",
        tmp_path / "root",
    )
    fake_runc = tmp_path / "bin/runc"
    fake_runc.parent.mkdir()
    fake_runc.write_text('#!/bin/sh\necho "runc $*"\n')
    fake_runc.chmod(0o755)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    spec = {"root": {"path": "rootfs"}, "process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]}}
    (bundle / "config.json").write_text(json.dumps(spec))
    env = {**os.environ, "PATH": f"{fake_runc.parent}:{os.environ['PATH']}"}
    runtime = str(root / "usr/bin/nvidia-container-runtime")
    created = subprocess.run(
        [runtime, "create", "--bundle", str(bundle), "c1"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert created.stdout == f"runc create --bundle {bundle} c1\n"
    hooks = json.loads((bundle / "config.json").read_text())["hooks"]["prestart"]
    assert hooks == [
        {
            "path": "/usr/bin/nvidia-container-runtime-hook",
            "args": ["nvidia-container-runtime-hook", "prestart"],
        }
    ]
    version = subprocess.run(
        [runtime, "--version"], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert version[0] == "NVIDIA Container Runtime version 1.17.4"
    assert version[-1] == "runc --version"


def test_nvidia_ctk_merges_the_runtime_into_daemon_json(
    repo_tree: RepoTree, tmp_path: Path
) -> None:
    root = unpack(
        repo_tree,
        CONTAINER_REPO_PATH,
        "nvidia-container-toolkit-base_1.17.4-1_amd64.deb",
        tmp_path / "root",
    )
    daemon_json = tmp_path / "daemon.json"
    daemon_json.write_text('{"log-driver": "json-file"}')
    subprocess.run(
        [
            str(root / "usr/bin/nvidia-ctk"),
            "runtime",
            "configure",
            "--runtime=docker",
            f"--config={daemon_json}",
        ],
        check=True,
        capture_output=True,
    )
    assert daemon_json.read_text() == json.dumps(
        {
            "log-driver": "json-file",
            "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}},
        },
        indent=4,
        sort_keys=True,
    )


# --- one CUDA repository per OS directory (the NVIDIA part alone, each with its own key) ------


@dataclass(frozen=True)
class NvidiaPart:
    root: Path
    os_stub: Path  # the external Depends (dkms, adduser, ...) as empty packages
    os_stub_key: Path


@pytest.fixture(scope="session")
def nvidia_part(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NvidiaPart]:
    base = tmp_path_factory.mktemp("nvidia-part")
    key, second_key = ArchiveKey(base / "gnupg"), ArchiveKey(base / "gnupg-second")
    try:
        key.ensure()
        second_key.ensure()
        build_nvidia_part(base / "part", key, second_key)
        stub = base / "os-stub"
        external = {
            n for d in CUDA_DIRECTORIES for n in external_dependencies(nvidia_standin_packages(d))
        }
        build_debs([StandinPackage(n, "1.0-1", "stub") for n in sorted(external)], stub, base / "s")
        index_flat_repo(stub, key, {"Origin": "stub"})
    finally:
        key.stop_agent()
        second_key.stop_agent()
    yield NvidiaPart(base / "part", stub, key.public_key)


def directory_apt(
    part: NvidiaPart, directory: str, base: Path, key: str | None = None
) -> PrivateApt:
    repo = part.root / "cuda/repos" / directory / "x86_64"
    signed_by = part.root / (key or cuda_key_path(directory))
    return PrivateApt(
        base,
        [
            f"deb [signed-by={signed_by}] file://{repo} /",
            f"deb [signed-by={part.os_stub_key}] file://{part.os_stub} /",
        ],
    )


@pytest.fixture(scope="session")
def cuda_apt(
    nvidia_part: NvidiaPart, tmp_path_factory: pytest.TempPathFactory
) -> Mapping[str, PrivateApt]:
    apts = {}
    for directory in CUDA_DIRECTORIES:
        apt = directory_apt(nvidia_part, directory, tmp_path_factory.mktemp(directory))
        apt.run("update")
        apts[directory] = apt
    return apts


def uninstallable(apt: PrivateApt, *packages: str) -> str:
    result = apt.run("install", "--simulate", *packages, check=False)
    assert result.returncode != 0
    return result.stdout + result.stderr


def test_every_directory_publishes_its_key_and_verifies_with_it(
    nvidia_part: NvidiaPart, cuda_apt: Mapping[str, PrivateApt], tmp_path: Path
) -> None:
    keys = {d: cuda_key_path(d) for d in CUDA_DIRECTORIES}
    assert keys == {
        "ubuntu2004": "cuda/repos/ubuntu2004/x86_64/3bf863cc.pub",
        "ubuntu2204": "cuda/repos/ubuntu2204/x86_64/3bf863cc.pub",
        "ubuntu2404": "cuda/repos/ubuntu2404/x86_64/3bf863cc.pub",
        "debian11": "cuda/repos/debian11/x86_64/3bf863cc.pub",
        "debian12": "cuda/repos/debian12/x86_64/3bf863cc.pub",
        "debian13": "cuda/repos/debian13/x86_64/8793F200.pub",
    }
    for directory, apt in cuda_apt.items():
        output = apt.run("update").stdout + apt.run("update").stderr
        assert "W:" not in output and "E:" not in output, directory
    # debian13's repository is not signed by the key of the others, nor they by its key.
    for directory, other_key in (("debian13", keys["debian12"]), ("debian12", keys["debian13"])):
        wrong = directory_apt(nvidia_part, directory, tmp_path / directory, other_key)
        result = wrong.run("update", check=False)
        assert "NO_PUBKEY" in result.stdout + result.stderr
        assert wrong.run("install", "--simulate", "cuda-drivers", check=False).returncode != 0


def test_ubuntu2004_has_cuda_11_2_cudnn_8_1_and_r470(cuda_apt: Mapping[str, PrivateApt]) -> None:
    apt = cuda_apt["ubuntu2004"]
    versions = apt.simulate_install("cuda-toolkit-11-2=11.2.1-1", "cuda-drivers-470=470.141.03-1")
    assert versions["cuda-toolkit-11-2"] == "11.2.1-1"
    assert versions["cuda-cudart-11-2"] == "11.2.152-1"  # (>=): the newest component
    assert versions["nvidia-driver-470"] == "470.239.06-0ubuntu1"
    assert "libnvidia-ifr1-470" in versions
    cudnn = apt.simulate_install(
        "libcudnn8-dev=8.1.0.77-1+cuda11.2", "libcudnn8=8.1.0.77-1+cuda11.2"
    )
    assert cudnn["libcudnn8"] == "8.1.0.77-1+cuda11.2"
    # nvidia-settings wants libxnvctrl0 of its release exactly: pinned alone it is held broken.
    alone = uninstallable(apt, "nvidia-settings=470.182.03-0ubuntu1")
    assert "libxnvctrl0 (= 470.182.03-0ubuntu1) but 550.144.03-0ubuntu1" in alone
    both = apt.simulate_install(
        "nvidia-settings=470.182.03-0ubuntu1", "libxnvctrl0=470.182.03-0ubuntu1"
    )
    assert both["libxnvctrl0"] == "470.182.03-0ubuntu1"


def test_ubuntu2204_starts_at_r515_and_has_two_r580_releases(
    cuda_apt: Mapping[str, PrivateApt],
) -> None:
    apt = cuda_apt["ubuntu2204"]
    for missing in (
        "cuda-toolkit-11-2",
        "nvidia-driver-470",
        "cuda-drivers-470",
        "libcudnn8=8.1.1.33-1+cuda11.2",
    ):
        assert "Unable to locate" in uninstallable(apt, missing) or "not found" in uninstallable(
            apt, missing
        )
    assert apt.simulate_install("cuda-drivers-580")["nvidia-driver-580"] == "580.126.16-1ubuntu1"
    old = apt.simulate_install(
        *(f"{name}=580.95.05-0ubuntu1" for name in (
            "nvidia-driver-580", "nvidia-dkms-580", "nvidia-kernel-common-580",
            "nvidia-kernel-source-580", "nvidia-utils-580", "nvidia-compute-utils-580",
            "libnvidia-compute-580", "libnvidia-gl-580", "libnvidia-common-580",
            "libnvidia-extra-580", "libnvidia-decode-580", "libnvidia-encode-580",
            "libnvidia-cfg1-580", "libnvidia-fbc1-580", "xserver-xorg-video-nvidia-580",
        ))
    )  # fmt: skip
    assert set(old.values()) - {"1.0-1"} == {"580.95.05-0ubuntu1"}
    assert "libnvidia-ifr1-580" not in old
    assert apt.simulate_install("cuda-toolkit-11-8")["cuda-nvcc-11-8"] == "11.8.89-1"


def test_ubuntu_open_and_proprietary_flavours_do_not_mix(
    cuda_apt: Mapping[str, PrivateApt],
) -> None:
    apt = cuda_apt["ubuntu2204"]
    headless = apt.simulate_install("nvidia-headless-580-open")
    assert {"nvidia-dkms-580-open", "nvidia-kernel-source-580-open"} <= headless.keys()
    assert (
        not {"nvidia-dkms-580", "nvidia-kernel-source-580", "nvidia-driver-580"} & headless.keys()
    )
    for pair in (
        ("nvidia-driver-580", "nvidia-driver-580-open"),
        ("nvidia-dkms-580", "nvidia-dkms-580-open"),
        ("nvidia-headless-580", "nvidia-kernel-source-580-open"),
    ):
        uninstallable(apt, *pair)
    # R470 has no open flavour.
    assert "Unable to locate" in uninstallable(cuda_apt["ubuntu2004"], "nvidia-driver-470-open")


def test_ubuntu2404_starts_at_r550(cuda_apt: Mapping[str, PrivateApt]) -> None:
    apt = cuda_apt["ubuntu2404"]
    uninstallable(apt, "cuda-drivers-535")
    uninstallable(apt, "cuda-toolkit-11-2")
    versions = apt.simulate_install("cuda-drivers-550")
    assert versions["nvidia-driver-550"] == "550.144.03-0ubuntu1"
    assert apt.simulate_install("cuda-toolkit-12-6")["cuda-toolkit-12-6"] == "12.6.3-1"
    pinning = apt.simulate_install("nvidia-driver-pinning-580.126.16")
    assert pinning == {"nvidia-driver-pinning-580.126.16": "580.126.16-1ubuntu1"}


def test_debian12_uses_debians_names(cuda_apt: Mapping[str, PrivateApt]) -> None:
    apt = cuda_apt["debian12"]
    for missing in (
        "nvidia-driver-580",
        "libnvidia-compute-580",
        "nvidia-utils-580",
        "cuda-toolkit-11-2",
    ):
        uninstallable(apt, missing)
    versions = apt.simulate_install("nvidia-driver", "nvidia-driver-cuda")
    assert versions["nvidia-driver"] == versions["libcuda1"] == "580.105.08-1"
    assert {"nvidia-kernel-dkms", "nvidia-smi", "libnvidia-ml1", "nvidia-persistenced",
            "firmware-nvidia-gsp", "nvidia-alternative"} <= versions.keys()  # fmt: skip
    # cuda-drivers-<branch> depends on nvidia-driver (>= the branch's floor): it pulls the newest.
    assert apt.simulate_install("cuda-drivers-545")["nvidia-driver"] == "580.105.08-1"
    pinned = apt.simulate_install("nvidia-driver=545.23.08-1", "nvidia-driver-libs=545.23.08-1",
        "nvidia-driver-bin=545.23.08-1", "xserver-xorg-video-nvidia=545.23.08-1",
        "nvidia-alternative=545.23.08-1", "nvidia-kernel-dkms=545.23.08-1",
        "nvidia-kernel-support=545.23.08-1", "firmware-nvidia-gsp=545.23.08-1")  # fmt: skip
    assert pinned["nvidia-kernel-dkms"] == "545.23.08-1"
    uninstallable(apt, "nvidia-kernel-dkms", "nvidia-kernel-open-dkms")
    open_driver = apt.simulate_install("nvidia-open")
    assert "nvidia-kernel-open-dkms" in open_driver and "nvidia-kernel-dkms" not in open_driver


def test_debian11_and_debian13_carry_what_they_really_have(
    cuda_apt: Mapping[str, PrivateApt],
) -> None:
    assert cuda_apt["debian11"].simulate_install("cuda-drivers")["nvidia-driver"] == "550.90.07-1"
    uninstallable(cuda_apt["debian11"], "cuda-drivers-470")
    trixie = cuda_apt["debian13"]
    # No R580 in debian13 (NVIDIA/cuda-repo-management#38, #40).
    uninstallable(trixie, "cuda-drivers-580")
    uninstallable(trixie, "nvidia-driver=580.105.08-1")
    versions = trixie.simulate_install("nvidia-open", "cuda-toolkit-13-0")
    assert versions["nvidia-driver"] == "590.48.01-1"
    assert versions["cuda-toolkit-13-0"] == "13.0.0-1"
    uninstallable(trixie, "libcudnn8")


@pytest.mark.parametrize(
    ("directory", "choice", "revisions"),
    [
        # gpufleet's default on Ubuntu 20.04: R535, proprietary, headless.
        (
            "ubuntu2004",
            DriverChoice(
                DriverNaming.UBUNTU, "535", "535.183.01", KernelModules.PROPRIETARY, headless=True
            ),
            {"535.183.01-0ubuntu1"},
        ),
        (
            "ubuntu2204",
            DriverChoice(
                DriverNaming.UBUNTU, "580", "580.126.16", KernelModules.OPEN, headless=True
            ),
            {"580.126.16-1ubuntu1"},
        ),
        (
            "ubuntu2204",
            DriverChoice(
                DriverNaming.UBUNTU, "580", "580.95.05", KernelModules.OPEN, headless=False
            ),
            {"580.95.05-0ubuntu1"},
        ),
        (
            "debian12",
            DriverChoice(
                DriverNaming.DEBIAN, "580", "580.105.08", KernelModules.OPEN, headless=True
            ),
            {"580.105.08-1"},
        ),
    ],
)
def test_gpufleets_driver_choices_install_one_release_and_nothing_else(
    cuda_apt: Mapping[str, PrivateApt],
    directory: str,
    choice: DriverChoice,
    revisions: set[str],
) -> None:
    # Every package gpufleet pins exists at the release, and apt pulls no other release's
    # driver package in beside them (a package the pins miss would float to the newest).
    pins = gpufleet_driver_pins(choice)
    versions = cuda_apt[directory].simulate_install(
        *(f"{name}={pattern}" for name, pattern in pins.items())
    )
    assert pins.keys() <= versions.keys()
    nvidia = {
        name: version
        for name, version in versions.items()
        if version.startswith(choice.branch + ".")
    }
    assert set(nvidia.values()) == revisions
    assert nvidia.keys() == pins.keys()


# --- DCGM: packages, nv-hostengine and dcgmi -------------------------------------------------

DCGM3_DEB = "datacenter-gpu-manager_3.3.9_amd64.deb"
DCGM4_CORE_DEB = "datacenter-gpu-manager-4-core_4.5.3-1_amd64.deb"
# The driver whose nvidia-smi stand-in the DCGM stand-ins read the GPUs through.
SMI_DEB = "nvidia-utils-470_470.182.03-0ubuntu1_amd64.deb"
CONTROL_FIELDS = ("Package", "Version", "Pre-Depends", "Depends", "Provides", "Conflicts")
# The Tesla V100-PCIE-16GB of the real DCGM 3.3.9 outputs (tests/fixtures/facts/dcgmi-*-v100-*).
V100_BUS = {
    "mode": "ok",
    "gpus": [
        {
            "name": "Tesla V100-PCIE-16GB",
            "pci_device_id": "1db4",
            "bus_id": "00000000:60:00.0",
            "uuid": "GPU-ef97eb30-627e-f4cd-11b2-37b04ef508ba",
            "memory_total_mib": 16160,
            "persistence_mode": True,
        }
    ],
}
# The GB10 of the real DCGM 4.2.3 document, persistence mode off as it was.
GB10_BUS = {"mode": "ok", "gpus": [{"pci_device_id": "2e12", "serial": "<<<NOT_SUPPORTED>>>"}]}
# The metadata row of the driver unpacked with the stand-ins (SMI_DEB).
DRIVER_ROW = f"| {'Driver Version Detected':<26}| {'470.182.03':<47}|"
NO_ENGINE_LINE = (
    "Error: Unable to connect to host engine. Host engine connection invalid/disconnected."
)


def control(deb: Path) -> dict[str, str]:
    fields = subprocess.run(
        ["dpkg-deb", "--field", str(deb), *CONTROL_FIELDS],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split(": ", 1) for line in fields.splitlines())


def test_dcgm_packages_carry_the_real_names_versions_and_dependencies(repo_tree: RepoTree) -> None:
    repo = repo_tree.root / CUDA_REPO_PATH
    replaced = (
        "datacenter-gpu-manager, datacenter-gpu-manager-fabricmanager (<< 2.0), "
        "datacenter-gpu-manager-dcp-nda-only, datacenter-gpu-manager-collectd, "
        "datacenter-gpu-manager-wsgi, datacenter-gpu-manager-fabricmanager-internal-api-header"
    )
    assert control(repo / DCGM3_DEB) == {
        "Package": "datacenter-gpu-manager",
        "Version": "1:3.3.9",
        "Depends": "libc6 (>= 2.17)",
        "Provides": "datacenter-gpu-manager",
        "Conflicts": replaced,
    }
    assert control(repo / DCGM4_CORE_DEB) == {
        "Package": "datacenter-gpu-manager-4-core",
        "Version": "1:4.5.3-1",
        "Pre-Depends": "passwd, login",
        "Depends": "libc6 (>= 2.27), lshw",
        "Conflicts": "datacenter-gpu-manager",
    }
    for major in (11, 12, 13):
        assert control(repo / f"datacenter-gpu-manager-4-cuda{major}_4.5.3-1_amd64.deb") == {
            "Package": f"datacenter-gpu-manager-4-cuda{major}",
            "Version": "1:4.5.3-1",
            "Depends": "datacenter-gpu-manager-4-core (= 1:4.5.3-1)",
            "Provides": "datacenter-gpu-manager-4 (= 1:4.5.3-1)",
        }


@pytest.mark.parametrize(
    ("branch", "architectures"),
    [("470", []), ("535", [Architecture.AMPERE]), ("580", [Architecture.VOLTA])],
)
def test_gpufleets_dcgm_pins_resolve_to_their_release(
    apt: PrivateApt, repo_tree: RepoTree, branch: str, architectures: list[Architecture]
) -> None:
    pins = gpufleet_dcgm_pins(branch, architectures)
    versions = apt.simulate_install(*(f"{name}={pattern}" for name, pattern in pins.items()))
    dcgm = {name: v for name, v in versions.items() if name.startswith("datacenter-gpu")}
    assert dcgm.keys() == pins.keys()
    release = DCGM_PINS[branch].version
    assert {version.split(":")[1].split("-")[0] for version in dcgm.values()} == {release}
    # Every directory carries the release's packages.
    for directory in CUDA_DIRECTORIES:
        repo = repo_tree.root / cuda_repo_path(directory)
        assert {name for name in pins if not list(repo.glob(f"{name}_{release}*.deb"))} == set()


def test_dcgm_unpinned_takes_the_newest_and_3_and_4_do_not_mix(apt: PrivateApt) -> None:
    # The plugins pin the core exactly: unpinned, both float to the newest release.
    versions = apt.simulate_install("datacenter-gpu-manager-4-cuda12")
    assert versions["datacenter-gpu-manager-4-core"] == "1:4.6.0-1"
    # 4.x's core depends on lshw, which the Debian mirror holds.
    assert "lshw" in versions
    assert "datacenter-gpu-manager" in uninstallable(
        apt, "datacenter-gpu-manager", "datacenter-gpu-manager-4-core"
    )


@pytest.fixture
def dcgm_root(repo_tree: RepoTree, tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """DCGM's deb (the test's parameter) and a driver's nvidia-smi unpacked into one root."""
    root = tmp_path / "root"
    unpack(repo_tree, CUDA_REPO_PATH, request.param, root)
    return unpack(repo_tree, CUDA_REPO_PATH, SMI_DEB, root)


def run_dcgm(
    root: Path, tmp_path: Path, bus: Mapping[str, object], program: str, *arguments: str
) -> subprocess.CompletedProcess[str]:
    """Run a DCGM stand-in on ``bus``, the root's nvidia-smi first on its PATH."""
    (tmp_path / "gpus.json").write_text(json.dumps(bus))
    env = {
        **os.environ,
        "PATH": f"{root / 'usr/bin'}{os.pathsep}{os.environ['PATH']}",
        "NVIDIA_STANDIN_CONFIG": str(tmp_path / "gpus.json"),
        "NVIDIA_STANDIN_STATE_DIR": str(tmp_path / "state"),
    }
    return subprocess.run(
        [str(root / "usr/bin" / program), *arguments],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def hostengine(dcgm_root: Path, tmp_path: Path) -> Iterator[str]:
    """nv-hostengine in the foreground as the unit runs it, on a free port: its --host."""
    port = free_port()
    (tmp_path / "gpus.json").write_text(json.dumps(V100_BUS))
    env = {
        **os.environ,
        "PATH": f"{dcgm_root / 'usr/bin'}{os.pathsep}{os.environ['PATH']}",
        "NVIDIA_STANDIN_CONFIG": str(tmp_path / "gpus.json"),
    }
    engine = subprocess.Popen(
        [str(dcgm_root / "usr/bin/nv-hostengine"), "-n", "-p", str(port)]
        + ["--service-account", "root"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert engine.stdout is not None
        assert (
            engine.stdout.readline()
            == f"Started host engine version 3.3.9 using port number: {port}\n"
        )
        yield f"127.0.0.1:{port}"
    finally:
        engine.terminate()
        assert engine.wait(timeout=10) == 0


@pytest.mark.parametrize("dcgm_root", [DCGM3_DEB], indirect=True)
def test_dcgmi_discovery_prints_the_real_table(
    dcgm_root: Path, tmp_path: Path, hostengine: str
) -> None:
    listing = run_dcgm(
        dcgm_root, tmp_path, V100_BUS, "dcgmi", "discovery", "-l", "--host", hostengine
    )
    assert (listing.returncode, listing.stdout) == (
        0,
        fixture_text("dcgmi-discovery-l-v100-pcie-16gb-dcgm-3.3.9.txt"),
    )


@pytest.mark.parametrize("dcgm_root", [DCGM3_DEB, DCGM4_CORE_DEB], indirect=True)
def test_dcgmi_without_a_host_engine_says_so_as_the_real_one(
    dcgm_root: Path, tmp_path: Path
) -> None:
    # A port nothing listens on, so no engine of this machine answers.
    host = f"127.0.0.1:{free_port()}"
    listing = run_dcgm(dcgm_root, tmp_path, V100_BUS, "dcgmi", "discovery", "-l", "--host", host)
    assert (listing.returncode, listing.stdout.splitlines()) == (
        235,
        [f"Error: unable to establish a connection to the specified host: {host}", NO_ENGINE_LINE],
    )
    # The diagnostic says it, then runs in an engine of its own.
    diag = run_dcgm(dcgm_root, tmp_path, V100_BUS, "dcgmi", "diag", "--host", host, "-r", "1", "-j")
    assert diag.stdout.splitlines()[0] == (
        f"Error: unable to establish a connection to the specified host: {host}"
    )
    info = parse_diag(diag)
    assert (info["hostengine_reachable"], len(info["gpus"]), info["errors"]) == (False, 1, [])


def parse_diag(run: subprocess.CompletedProcess[str]) -> DcgmDiagInfo:
    info = parse_dcgmi_diag([*run.stdout.splitlines(), f"{DCGMI_EXIT_MARKER}{run.returncode}"])
    assert info is not None
    return info


@pytest.mark.parametrize(
    ("dcgm_root", "level", "fixture"),
    [
        (DCGM3_DEB, 1, "dcgmi-diag-r1-v100-pcie-16gb-dcgm-3.3.9.txt"),
        (DCGM3_DEB, 3, "dcgmi-diag-r3-v100-pcie-16gb-dcgm-3.3.9.txt"),
    ],
    indirect=["dcgm_root"],
)
def test_dcgmi_diag_tables_have_the_real_layout(
    dcgm_root: Path, tmp_path: Path, level: int, fixture: str
) -> None:
    table = run_dcgm(dcgm_root, tmp_path, V100_BUS, "dcgmi", "diag", "-r", str(level))
    real = fixture_lines(fixture)
    # The real run's driver was 560.35.03, the stand-in's is the one unpacked here.
    real[6] = DRIVER_ROW
    assert (table.returncode, table.stdout.splitlines()) == (0, real)


@pytest.mark.parametrize("dcgm_root", [DCGM4_CORE_DEB], indirect=True)
def test_dcgmi_4_diag_table_has_the_real_layout(dcgm_root: Path, tmp_path: Path) -> None:
    # The DCGM user guide's four GPUs (device 25b6), persistence mode on.
    bus = {"mode": "ok", "gpus": [{"pci_device_id": "25b6", "persistence_mode": True}] * 4}
    table = run_dcgm(dcgm_root, tmp_path, bus, "dcgmi", "diag", "-r", "3")
    real = fixture_lines("dcgmi-diag-r3-dcgm-4.0.0-dcgm-user-guide.txt")
    real[5] = real[5].replace("4.0.0", "4.5.3")
    real[6] = DRIVER_ROW
    assert (table.returncode, table.stdout.splitlines()) == (0, real)


@pytest.mark.parametrize("dcgm_root", [DCGM4_CORE_DEB], indirect=True)
def test_dcgmi_4_json_is_the_real_gb10_document(dcgm_root: Path, tmp_path: Path) -> None:
    run = run_dcgm(dcgm_root, tmp_path, GB10_BUS, "dcgmi", "diag", "-r", "1", "-j")
    assert run.returncode == 226  # DCGM_ST_NVVS_ERROR, as the GB10's dcgmi exited
    real = fixture_lines("dcgmi-diag-r1-j-gb10-dcgm-4.2.3.json")
    # jsoncpp's layout line for line (the fixture was retyped without trailing spaces), but for
    # the test summary's SRAM note the stand-in does not make and the versions.
    summary_info = real.index('\t\t\t\t\t\t\t"info" :')
    del real[summary_info : summary_info + 4]
    real = [line.replace("580.82.09", "470.182.03").replace("4.2.3", "4.5.3") for line in real]
    assert [line.rstrip() for line in run.stdout.splitlines()] == real
    info = parse_diag(run)
    assert info["gpus"][0]["tests"]["software"]["status"] == "fail"


def keys(objects: object) -> set[str]:
    """The keys the JSON objects in ``objects`` (a list of them) use."""
    assert isinstance(objects, list)
    return {key for item in objects for key in item}


@pytest.mark.parametrize("dcgm_root", [DCGM3_DEB, DCGM4_CORE_DEB], indirect=True)
@pytest.mark.parametrize("level", sorted(DIAG_LEVELS))
def test_dcgmi_diag_json_reads_as_the_real_documents(
    dcgm_root: Path, tmp_path: Path, level: int
) -> None:
    two_v100s = {**V100_BUS, "gpus": [V100_BUS["gpus"][0], {"persistence_mode": True}]}
    run = run_dcgm(dcgm_root, tmp_path, two_v100s, "dcgmi", "diag", "-r", str(level), "-j")
    assert run.returncode == 0
    document = json.loads(run.stdout)
    info = parse_diag(run)
    assert info["errors"] == [] and info["hostengine_reachable"]
    expected = set(DIAG_LEVELS[level].tests)
    # The keys of the real documents' objects, each level down: DCGM 3.3.1's categories
    # (NVIDIA/DCGM#139), DCGM 4's GB10 document and its "diagnostic" test with "info" (#215).
    if "DCGM GPU Diagnostic" in document:
        # 3.x lists the EUD test at level 3, skipped without its package.
        expected |= {"eud"} if level == 3 else set()
        real = json.loads(
            "[" + fixture_text("dcgmi-diag-r3-j-fragment-t400-dcgm-3.3.1.txt").rstrip(",\n") + "]"
        )
        made = document["DCGM GPU Diagnostic"]["test_categories"][1:]
        assert {"version", "Driver Version Detected", "GPU Device IDs"} <= document.keys()
    else:
        gb10 = json.loads(fixture_text("dcgmi-diag-r1-j-gb10-dcgm-4.2.3.json"))
        assert document.keys() == gb10.keys()
        assert keys(document["entity_groups"]) == keys(gb10["entity_groups"])
        assert document["metadata"].keys() == gb10["metadata"].keys()
        real = gb10["DCGM Diagnostic"]["test_categories"]
        made = document["DCGM Diagnostic"]["test_categories"]
    real_tests = [test for category in real for test in category["tests"]]
    made_tests = [test for category in made for test in category["tests"]]
    assert keys(made) <= keys(real)
    assert keys(made_tests) <= keys(real_tests)
    made_results = [result for test in made_tests for result in test["results"]]
    assert keys(made_results) <= keys([r for test in real_tests for r in test["results"]]) | {
        "info"
    }
    for gpu in info["gpus"]:
        assert gpu["tests"].keys() == expected
        assert {result["status"] for result in gpu["tests"].values()} <= {"pass", "skip"}
    if level == 3:
        tests = info["gpus"][0]["tests"]
        assert tests["diagnostic"]["figures"] == {"gflops": 21688.18}
        assert tests["pcie"]["figures"]["bidirectional_gb_s"] == 22.39
        power = {"max_power_w": 251.0, "average_power_w": 247.8}
        assert tests["targeted_power"]["figures"] == power


@pytest.mark.parametrize("dcgm_root", [DCGM3_DEB], indirect=True)
def test_dcgmi_diag_through_an_engine_runs_as_its_service_account(
    dcgm_root: Path, tmp_path: Path
) -> None:
    port = str(free_port())
    (tmp_path / "gpus.json").write_text(json.dumps(V100_BUS))
    env = {
        **os.environ,
        "PATH": f"{dcgm_root / 'usr/bin'}{os.pathsep}{os.environ['PATH']}",
        "NVIDIA_STANDIN_CONFIG": str(tmp_path / "gpus.json"),
    }
    engine = subprocess.Popen(
        [str(dcgm_root / "usr/bin/nv-hostengine"), "-n", "-p", port]
        + ["--service-account", "no-such-account-here"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert engine.stdout is not None and engine.stdout.readline().startswith("Started")
        run = run_dcgm(
            dcgm_root, tmp_path, V100_BUS, "dcgmi", "diag", "--host", f"127.0.0.1:{port}",
            "-r", "1", "-j",
        )  # fmt: skip
    finally:
        engine.terminate()
        engine.wait(timeout=10)
    assert run.returncode == 253  # DCGM_ST_GENERIC_ERROR
    info = parse_diag(run)
    assert info["hostengine_reachable"] and info["gpus"] == []
    assert info["errors"] == [
        "Error: Unable to complete diagnostic for group 2147483647. Return: (-3) Generic "
        "unspecified error."
    ]


@pytest.mark.parametrize("dcgm_root", [DCGM4_CORE_DEB], indirect=True)
def test_nv_hostengine_daemonizes_once_and_stops(dcgm_root: Path, tmp_path: Path) -> None:
    pid_file = str(tmp_path / "nvhostengine.pid")
    options = ("-p", str(free_port()), "--pid", pid_file, "--service-account", "root")
    started = run_dcgm(dcgm_root, tmp_path, V100_BUS, "nv-hostengine", *options)
    assert (started.returncode, started.stdout) == (
        0,
        f"Started host engine version 4.5.3 using port number: {options[1]}\n",
    )
    pid = int(Path(pid_file).read_text())
    try:
        again = run_dcgm(dcgm_root, tmp_path, V100_BUS, "nv-hostengine", *options)
        assert (again.returncode, again.stdout) == (
            1,
            f"Host engine already running with pid {pid}\n",
        )
    finally:
        stopped = run_dcgm(dcgm_root, tmp_path, V100_BUS, "nv-hostengine", "-t", "--pid", pid_file)
    assert (stopped.returncode, stopped.stdout) == (0, "Host engine successfully terminated.\n")
    # Without a driver NVML can open, it does not start.
    no_driver = run_dcgm(dcgm_root, tmp_path, {"mode": "no-driver"}, "nv-hostengine", "-n")
    assert no_driver.returncode == 255
    assert no_driver.stderr.endswith("Error: DCGM failed to start embedded engine\n")


@pytest.mark.parametrize("dcgm_root", [DCGM4_CORE_DEB], indirect=True)
def test_nvidia_dcgm_unit_is_nvidias(dcgm_root: Path) -> None:
    unit = (dcgm_root / "usr/lib/systemd/system/nvidia-dcgm.service").read_text()
    template = fixture_text("systemd-nvidia-dcgm.service.in.txt")
    assert unit == template.replace("@CMAKE_INSTALL_BINDIR@", "bin")
    assert "\nExecStart=/usr/bin/nv-hostengine -n --service-account nvidia-dcgm\n" in unit
