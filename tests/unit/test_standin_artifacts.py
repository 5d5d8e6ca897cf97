"""The stand-in CUDA runfile, cuDNN archive and docker-save archive have the real names, layouts
and behaviour (testbed.standin_artifacts); the runfile runs under dash against a temporary root."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

from testbed.standin_artifacts import (
    CUDNN_ARCHIVE_NAME,
    RUNFILE_NAME,
    ArtifactServer,
    build_artifacts,
    build_cuda_runfile,
    build_cudnn_archive,
    build_image_archive,
    file_sha256,
)
from testbed.standin_repo import shared_library

if TYPE_CHECKING:
    from testbed.fleet import Fleet

TOOLKIT = "usr/local/cuda-11.2"
LIB = f"{TOOLKIT}/targets/x86_64-linux/lib"
DRIVER_MARKER = "usr/lib/x86_64-linux-gnu/libcuda.so.460.32.03"
RUNS_LOG = "var/log/gpufleet-standin/runfile-runs.log"
PAUSE_FILE = "etc/gpufleet-standin/runfile-pause"
# The nvcc banner of CUDA 11.2.2 (nvidia-reference/nvcc-version.txt).
NVCC_RELEASE_LINE = "Cuda compilation tools, release 11.2, V11.2.152"
# What the real runfile needs on a host: coreutils, tar, gzip (no gcc there).
HOST_TOOLS = ("sh", "mkdir", "date", "cat", "id", "tail", "base64", "tar", "gzip", "mktemp",
              "cp", "ln", "rm", "sleep")  # fmt: skip
SPLIT_LIBRARIES = ("adv_infer", "adv_train", "cnn_infer", "cnn_train", "ops_infer", "ops_train")


@pytest.fixture(scope="module")
def runfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cuda_runfile(tmp_path_factory.mktemp("runfile"))


@pytest.fixture(scope="module")
def cudnn_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cudnn_archive(tmp_path_factory.mktemp("cudnn"))


def run(
    runfile: Path, root: Path, *args: str, path: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``sh RUNFILE args`` (dash on Debian) writing under ``root``, stdin not a terminal."""
    env = {**os.environ, "GPUFLEET_STANDIN_ROOT": str(root)}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(["sh", str(runfile), *args], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def soname(library: Path) -> str:
    dynamic = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True)
    return dynamic.stdout.split("Library soname: [", 1)[1].split("]", 1)[0]


def runs(root: Path) -> int:
    return len((root / RUNS_LOG).read_text().splitlines())


def test_runfile_is_an_executable_posix_script(runfile: Path) -> None:
    assert runfile.name == "cuda_11.2.2_460.32.03_linux.run"
    assert runfile.stat().st_mode & 0o111
    assert runfile.read_text().startswith("#!/bin/sh\n")
    assert Path("/bin/sh").resolve().name == "dash"


def test_without_silent_and_without_a_terminal_it_refuses(runfile: Path, tmp_path: Path) -> None:
    result = run(runfile, tmp_path, "--toolkit")
    assert result.returncode == 1
    assert result.stderr.startswith("Error opening terminal: ")
    assert not (tmp_path / TOOLKIT).exists()
    assert runs(tmp_path) == 1


@pytest.mark.parametrize("bad", ["--toolkt", "--toolkitpath", "-t", "toolkit"])
def test_unknown_options_are_refused(runfile: Path, tmp_path: Path, bad: str) -> None:
    result = run(runfile, tmp_path, "--silent", "--toolkit", bad)
    assert result.returncode == 1
    assert f"Unknown option: {bad}" in result.stderr
    assert not (tmp_path / TOOLKIT).exists()


def test_silent_toolkit_install_writes_the_real_layout(runfile: Path, tmp_path: Path) -> None:
    result = run(runfile, tmp_path, "--silent", "--toolkit", "--toolkitpath=/usr/local/cuda-11.2",
                 "--no-opengl-libs", "--no-drm", "--override", "--tmpdir=/var/tmp")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    toolkit = tmp_path / TOOLKIT
    assert os.readlink(toolkit / "lib64") == "targets/x86_64-linux/lib"
    assert os.readlink(toolkit / "include") == "targets/x86_64-linux/include"
    assert os.readlink(tmp_path / LIB / "libcudart.so") == "libcudart.so.11.0"
    assert os.readlink(tmp_path / LIB / "libcudart.so.11.0") == "libcudart.so.11.2.152"
    assert soname(toolkit / "lib64/libcudart.so.11.2.152") == "libcudart.so.11.0"
    assert os.readlink(tmp_path / "usr/local/cuda") == "/usr/local/cuda-11.2"
    assert "#define CUDART_VERSION  11020" in (toolkit / "include/cuda_runtime_api.h").read_text()
    assert os.access(toolkit / "bin/cuda-uninstaller", os.X_OK)
    version_json = (toolkit / "version.json").read_text()
    assert '"version" : "11.2.2"' in version_json
    assert json.loads(version_json)["cuda"] == {"name": "CUDA SDK", "version": "11.2.2"}
    nvcc = subprocess.run([toolkit / "bin/nvcc", "--version"], capture_output=True, text=True)
    assert NVCC_RELEASE_LINE in nvcc.stdout
    assert (tmp_path / "usr/share/man/man7/libcudart.7").is_file()
    log = (tmp_path / "var/log/cuda-installer.log").read_text()
    assert "[INFO]: Setting silent=true\n[INFO]: Setting toolkit=true\n" in log
    assert "[INFO]: Components to install:\n[INFO]: CUDA Toolkit 11.2\n" in log
    assert not (tmp_path / DRIVER_MARKER).exists()
    assert not (tmp_path / "var/log/gpufleet-standin/runfile-driver-installed").exists()
    assert not list((tmp_path / "var/tmp").iterdir())  # its temporary files are gone
    assert run(runfile, tmp_path, "--silent", "--toolkit", "--no-man-page").returncode == 0
    assert runs(tmp_path) == 2


def test_only_the_driver_option_installs_the_bundled_driver(runfile: Path, tmp_path: Path) -> None:
    samples = ("--samples", "--samplespath=/srv/samples")
    assert run(runfile, tmp_path, "--silent", "--toolkit", *samples).returncode == 0
    assert not (tmp_path / DRIVER_MARKER).exists()
    assert (tmp_path / "srv/samples/NVIDIA_CUDA-11.2_Samples/Makefile").is_file()
    result = run(runfile, tmp_path, "--silent", "--driver")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / DRIVER_MARKER).is_file()
    assert (tmp_path / "var/log/gpufleet-standin/runfile-driver-installed").is_file()
    log = (tmp_path / "var/log/cuda-installer.log").read_text()
    assert "[INFO]: Executing NVIDIA-Linux-x86_64-460.32.03.run --ui=none" in log


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: it compares a run as root with one as user nobody (setpriv)",
)
def test_silent_without_components_installs_everything_as_root(
    runfile: Path, tmp_path: Path
) -> None:
    assert run(runfile, tmp_path, "--silent").returncode == 0
    assert (tmp_path / DRIVER_MARKER).is_file()
    assert (tmp_path / TOOLKIT / "version.json").is_file()
    # Without root at least one component is required (pytest's directories are root's only).
    with tempfile.TemporaryDirectory() as scratch:
        shared = Path(scratch)
        shared.chmod(0o755)
        # The unprivileged run's /tmp (its log goes there): nobody's own, not world-writable.
        (shared / "tmp").mkdir(mode=0o700)
        os.chown(shared / "tmp", 65534, 65534)
        copy = Path(shutil.copy(runfile, shared / runfile.name))
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        env = {**os.environ, "GPUFLEET_STANDIN_ROOT": str(shared)}
        result = subprocess.run([*nobody, "sh", str(copy), "--silent"], env=env, text=True,
                                stdin=subprocess.DEVNULL, capture_output=True)  # fmt: skip
        assert result.returncode == 1
        assert "At least one of --driver" in (shared / "tmp/cuda-installer.log").read_text()
        assert "See log at /tmp/cuda-installer.log" in result.stdout


def test_without_gcc_it_fails_unless_overridden(runfile: Path, tmp_path: Path) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in HOST_TOOLS:
        (tools / tool).symlink_to(str(shutil.which(tool)))
    root = tmp_path / "root"
    result = run(runfile, root, "--silent", "--toolkit", path=str(tools))
    assert result.returncode == 1
    assert "Failed to verify gcc version" in result.stdout
    assert (
        "[ERROR]: Missing gcc. gcc is required to continue."
        in (root / "var/log/cuda-installer.log").read_text()
    )
    assert not (root / TOOLKIT).exists()
    assert (
        run(runfile, root, "--silent", "--toolkit", "--override", path=str(tools)).returncode == 0
    )
    assert (root / LIB / "libcudart.so.11.2.152").is_file()


def test_an_interrupted_install_leaves_nvcc_and_version_json_only(
    runfile: Path, tmp_path: Path
) -> None:
    (tmp_path / PAUSE_FILE).parent.mkdir(parents=True)
    (tmp_path / PAUSE_FILE).write_text("30\n")
    env = {**os.environ, "GPUFLEET_STANDIN_ROOT": str(tmp_path)}
    process = subprocess.Popen(["sh", str(runfile), "--silent", "--toolkit"], env=env,
                               stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / TOOLKIT / "version.json").exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        assert process.poll() is None  # still paused
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert (tmp_path / TOOLKIT / "bin/nvcc").is_file()
    assert not (tmp_path / LIB / "libcudart.so.11.2.152").exists()
    assert not (tmp_path / TOOLKIT / "lib64").exists()


def test_extract_writes_the_driver_runfile_and_the_component_trees(
    runfile: Path, tmp_path: Path
) -> None:
    assert run(runfile, tmp_path, "--extract=/srv/cuda").returncode == 0
    extracted = tmp_path / "srv/cuda"
    assert (extracted / "NVIDIA-Linux-x86_64-460.32.03.run").is_file()
    assert (extracted / "cuda_nvcc/bin/nvcc").is_file()
    assert (extracted / "cuda_cudart/targets/x86_64-linux/lib/libcudart.so.11.2.152").is_file()
    assert not (tmp_path / TOOLKIT).exists()
    help_text = run(runfile, tmp_path, "--help")
    assert help_text.returncode == 0 and "--toolkitpath=<path>" in help_text.stdout


def test_cudnn_archive_has_the_real_layout_and_chains(cudnn_archive: Path, tmp_path: Path) -> None:
    assert cudnn_archive.name == "cudnn-11.2-linux-x64-v8.1.1.33.tgz"
    listing = subprocess.run(["tar", "-tzvf", str(cudnn_archive)], capture_output=True, text=True)
    entries = {}
    for line in listing.stdout.splitlines():
        name, _, target = " ".join(line.split()[5:]).partition(" -> ")
        entries[name] = target
    headers = ["cudnn", *(f"cudnn_{part}" for part in SPLIT_LIBRARIES), "cudnn_backend"]
    for header in [*headers, "cudnn_version"]:
        assert entries[f"cuda/include/{header}.h"] == ""
    assert entries["cuda/NVIDIA_SLA_cuDNN_Support.txt"] == ""
    assert entries["cuda/lib64/libcudnn_static.a"] == "libcudnn_static_v8.a"
    subprocess.run(["tar", "-xzf", str(cudnn_archive), "-C", str(tmp_path)], check=True)
    for library in ["libcudnn", *(f"libcudnn_{part}" for part in SPLIT_LIBRARIES)]:
        assert entries[f"cuda/lib64/{library}.so"] == f"{library}.so.8"
        assert entries[f"cuda/lib64/{library}.so.8"] == f"{library}.so.8.1.1"
        assert soname(tmp_path / f"cuda/lib64/{library}.so.8.1.1") == f"{library}.so.8"
    version = (tmp_path / "cuda/include/cudnn_version.h").read_text()
    for define in ("CUDNN_MAJOR 8", "CUDNN_MINOR 1", "CUDNN_PATCHLEVEL 1"):
        assert f"#define {define}\n" in version
    archive = subprocess.run(["ar", "t", str(tmp_path / "cuda/lib64/libcudnn_static_v8.a")],
                             capture_output=True, text=True, check=True)  # fmt: skip
    assert archive.stdout.strip().endswith(".o")


def test_archives_are_byte_for_byte_reproducible(tmp_path: Path) -> None:
    first = [build_cudnn_archive(tmp_path / "a"), build_cuda_runfile(tmp_path / "a")]
    shared_library.cache_clear()  # rebuild the ELF libraries too
    second = [build_cudnn_archive(tmp_path / "b"), build_cuda_runfile(tmp_path / "b")]
    assert [file_sha256(p) for p in first] == [file_sha256(p) for p in second]


def test_build_artifacts_caches_one_set_with_its_digests(tmp_path: Path) -> None:
    artifacts = build_artifacts(tmp_path)
    assert (artifacts.runfile, artifacts.cudnn_archive) == (RUNFILE_NAME, CUDNN_ARCHIVE_NAME)
    assert artifacts.directory.parent == tmp_path / "artifacts"
    assert artifacts.runfile_sha256 == file_sha256(artifacts.path(RUNFILE_NAME))
    assert artifacts.cudnn_archive_sha256 == file_sha256(artifacts.path(CUDNN_ARCHIVE_NAME))
    assert build_artifacts(tmp_path) == artifacts


def test_image_archive_is_docker_save_format(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        tar.add(tree, arcname=".")
    archive = build_image_archive(rootfs, "gpufleet/tensorflow:test", tmp_path / "image.tar")
    with tarfile.open(archive) as tar:
        manifest = json.load(cast(io.BufferedReader, tar.extractfile("manifest.json")))
        [entry] = manifest
        assert entry["RepoTags"] == ["gpufleet/tensorflow:test"]
        config_bytes = cast(io.BufferedReader, tar.extractfile(entry["Config"])).read()
        assert entry["Config"] == hashlib.sha256(config_bytes).hexdigest() + ".json"
        config = json.loads(config_bytes)
        [layer] = entry["Layers"]
        layer_bytes = cast(io.BufferedReader, tar.extractfile(layer)).read()
        version = cast(io.BufferedReader, tar.extractfile(layer.replace("layer.tar", "VERSION")))
        assert version.read() == b"1.0"
        repositories = json.load(cast(io.BufferedReader, tar.extractfile("repositories")))
    assert layer_bytes == rootfs.read_bytes()
    assert config["rootfs"] == {"type": "layers", "diff_ids": [f"sha256:{file_sha256(rootfs)}"]}
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert config["config"]["Cmd"] == ["/bin/bash"]
    assert repositories == {"gpufleet/tensorflow": {"test": layer.split("/")[0]}}
    if docker_daemon():  # a docker daemon here: load it for real
        subprocess.run(["docker", "load", "-i", str(archive)], check=True, capture_output=True)
        subprocess.run(["docker", "rmi", "gpufleet/tensorflow:test"], check=True)


def docker_daemon() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


@dataclass
class _LocalController:
    def command(self, command: list[str]) -> list[str]:
        return command


@dataclass
class _LocalFleet:
    """What ArtifactServer uses of a Fleet, on this machine's loopback."""

    run_dir: Path
    controller: _LocalController = field(default_factory=_LocalController)


def test_artifact_server_serves_extra_files_and_counts_requests(
    runfile: Path, tmp_path: Path
) -> None:
    extra = tmp_path / "elsewhere" / "image.tar"
    extra.parent.mkdir()
    extra.write_bytes(b"image")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fleet = cast("Fleet", _LocalFleet(tmp_path / "run"))
    server = ArtifactServer(fleet, runfile.parent, {"tf.tar": extra}, host="127.0.0.1", port=port)
    with server:
        assert server.url(RUNFILE_NAME) == f"http://127.0.0.1:{port}/{RUNFILE_NAME}"
        with urllib.request.urlopen(server.url(RUNFILE_NAME), timeout=10) as response:
            assert response.read() == runfile.read_bytes()
        with urllib.request.urlopen(server.url("tf.tar"), timeout=10) as response:
            assert response.read() == b"image"
        deadline = time.monotonic() + 5
        while server.requests_for(RUNFILE_NAME) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.requests_for(RUNFILE_NAME) == 1
        assert server.requests_for("tf.tar") == 1
        assert server.requests_for(CUDNN_ARCHIVE_NAME) == 0
    assert server.process is None
