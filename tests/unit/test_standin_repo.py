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
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from gpufleet.stack.catalog import DriverChoice, KernelModules
from gpufleet.stack.catalog import driver_packages as gpufleet_driver_pins
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
