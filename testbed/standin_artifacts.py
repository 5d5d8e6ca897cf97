"""Stand-ins for NVIDIA's CUDA 11.2.2 runfile and cuDNN 8.1.1 tar archive, and the server that
offers them to a fleet (issue 11: installing CUDA and cuDNN without NVIDIA's apt repositories).

NVIDIA's downloads cannot be reached from the test machines. These carry the real file names, the
real layouts and symlink chains, real ELF libraries with the real SONAMEs and the real installer
options; gpufleet/stack/SOURCES.md ("CUDA runfile and cuDNN archive") cites each fact and marks
what was chosen (NOT FOUND). The runfile is a POSIX sh script (testbed/artifact_payloads) with its
payload appended; the same stand-in nvcc as the apt packages' is inside.

``build_image_archive`` turns a root filesystem tarball (testbed.images) into a ``docker save``
archive, so a host can ``docker load`` an image fetched over HTTP as it would one from a registry.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from testbed.machine import start_http_server, stop_process
from testbed.rootfs import built_atomically, locked
from testbed.standin_repo import (
    CUDNN_VERSION_HEADER,
    PAYLOADS,
    REPO_HOST,
    TOOLKIT_RELEASES,
    payload_text,
    render,
    run_command,
    shared_library,
)

if TYPE_CHECKING:
    from testbed.fleet import Fleet

RUNFILE_NAME = "cuda_11.2.2_460.32.03_linux.run"
CUDNN_ARCHIVE_NAME = "cudnn-11.2-linux-x64-v8.1.1.33.tgz"
ARTIFACT_PORT = 8081
ARTIFACT_PAYLOADS = Path(__file__).with_name("artifact_payloads")
SUMS_FILE = "SHA256SUMS"

TOOLKIT = next(toolkit for toolkit in TOOLKIT_RELEASES if toolkit.release == "11.2.2")
# The driver the runfile bundles is the one its name carries (cuda-runtime's floor too).
DRIVER_VERSION = TOOLKIT.driver_floor
CUDART_VERSION_DEFINE = "11020"  # cuda_runtime_api.h of 11.2: major * 1000 + minor * 10
TARGET_LIB = "targets/x86_64-linux/lib"
TARGET_INCLUDE = "targets/x86_64-linux/include"
# version.json of the toolkit: the components whose 11.2.2 versions are confirmed (the real file
# lists more; its full content is NOT FOUND).
VERSION_JSON_COMPONENTS = {
    "cuda": ("CUDA SDK", TOOLKIT.release),
    "cuda_cudart": ("CUDA Runtime (cudart)", TOOLKIT.cudart),
    "cuda_nvcc": ("CUDA NVCC", TOOLKIT.nvcc),
    "libcublas": ("CUDA cuBLAS", TOOLKIT.cublas),
    "libcufft": ("CUDA cuFFT", "10.4.1.152"),
    "libcurand": ("CUDA cuRAND", "10.2.3.152"),
    "libcusolver": ("CUDA cuSOLVER", "11.1.0.152"),
    "libcusparse": ("CUDA cuSPARSE", "11.4.1.1152"),
    "libnpp": ("CUDA NPP", "11.3.2.152"),
    "libnvjpeg": ("CUDA nvJPEG", "11.4.0.152"),
    "nvidia_driver": ("NVIDIA Linux Driver", DRIVER_VERSION),
}

CUDNN_VERSION = "8.1.1"
CUDNN_MAJOR = CUDNN_VERSION.split(".")[0]
# libcudnn.so and the split libraries of cuDNN 8, each libX.so -> libX.so.8 -> libX.so.8.1.1.
CUDNN_LIBRARIES = ("libcudnn", *(f"libcudnn_{part}" for part in (
    "adv_infer", "adv_train", "cnn_infer", "cnn_train", "ops_infer", "ops_train")))  # fmt: skip
CUDNN_HEADERS = ("cudnn", *(lib.removeprefix("lib") for lib in CUDNN_LIBRARIES[1:]),
                 "cudnn_backend")  # fmt: skip
CUDNN_LICENSE = "NVIDIA_SLA_cuDNN_Support.txt"
# Members of both archives get this mtime (the cuDNN 8.1.1 release month; the real ones' NOT FOUND).
ARCHIVE_MTIME = 1614297600  # 2021-02-26T00:00:00Z
IMAGE_CREATED = "1970-01-01T00:00:00Z"
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# Deterministic trees and archives
# --------------------------------------------------------------------------------------------


def write_tree(
    root: Path, files: Mapping[str, tuple[bytes, int]], links: Mapping[str, str]
) -> None:
    """Files (content, mode) and symlinks under ``root``, by path relative to it."""
    for path, (content, mode) in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)
    for path, destination in links.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).symlink_to(destination)


def _normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = ARCHIVE_MTIME
    if not info.issym():
        info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
    return info


def write_tgz(source: Path, output: Path) -> None:
    """A tar.gz of everything under ``source``, sorted, with fixed owner, modes and times: the
    same tree gives the same bytes."""
    with (
        output.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for path in sorted(source.rglob("*")):
            name = str(path.relative_to(source))
            tar.add(path, arcname=name, recursive=False, filter=_normalized)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# The CUDA runfile
# --------------------------------------------------------------------------------------------


def version_json() -> str:
    """version.json of the toolkit in NVIDIA's format (3-space indent, `"key" : value`)."""
    components = {key: {"name": name, "version": version}
                  for key, (name, version) in sorted(VERSION_JSON_COMPONENTS.items())}  # fmt: skip
    return json.dumps(components, indent=3, separators=(",", " : ")) + "\n"


def runfile_payload(root: Path) -> None:
    """The toolkit's files as the runfile carries them (laid out like its `--extract=` output)."""
    series = TOOLKIT.series
    cudart = f"libcudart.so.{TOOLKIT.cudart}"
    cudart_soname = f"libcudart.so.{TOOLKIT.major}.0"
    lib = f"cuda_cudart/{TARGET_LIB}"
    # The same stand-in nvcc as cuda-nvcc-11-2's (standin_repo.toolkit_packages).
    nvcc = payload_text("nvcc", CUDA_SERIES=TOOLKIT.dashed, CUDA_RELEASE=series,
                        NVCC_VERSION=TOOLKIT.nvcc, BUILT_ON=TOOLKIT.nvcc_built_on,
                        BUILD_TAG=TOOLKIT.nvcc_build,
                        COPYRIGHT_YEAR=TOOLKIT.copyright_year)  # fmt: skip
    artifact = (ARTIFACT_PAYLOADS / "cuda-uninstaller").read_text()
    header = (ARTIFACT_PAYLOADS / "cuda_runtime_api.h").read_text()
    files = {
        "EULA.txt": (f"gpufleet stand-in for the CUDA {series} EULA.\n".encode(), 0o644),
        "version.json": (version_json().encode(), 0o644),
        "bin/cuda-uninstaller": (render(artifact, CUDA_SERIES=series).encode(), 0o755),
        "cuda_nvcc/bin/nvcc": (nvcc.encode(), 0o755),
        f"{lib}/{cudart}": (shared_library(cudart_soname, TOOLKIT.cudart), 0o755),
        f"cuda_cudart/{TARGET_INCLUDE}/cuda_runtime_api.h": (
            render(header, CUDA_SERIES=series, CUDART_VERSION=CUDART_VERSION_DEFINE).encode(),
            0o644,
        ),
        "cuda_documentation/man/man7/libcudart.7": (
            f'.TH "libcudart" 7 "CUDA {series}" "gpufleet stand-in"\n'.encode(),
            0o644,
        ),
    }
    links = {f"{lib}/{cudart_soname}": cudart, f"{lib}/libcudart.so": cudart_soname}
    write_tree(root, files, links)


def build_cuda_runfile(output_dir: Path) -> Path:
    """Write the stand-in RUNFILE_NAME into ``output_dir``: the installer script, then its payload
    (base64 of a tar.gz) from the line the script reads it at."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpufleet-runfile-") as scratch:
        runfile_payload(Path(scratch) / "payload")
        archive = Path(scratch) / "payload.tgz"
        write_tgz(Path(scratch) / "payload", archive)
        encoded = base64.encodebytes(archive.read_bytes()).decode()
    template = (ARTIFACT_PAYLOADS / "cuda-runfile.sh").read_text()
    payload_line = str(template.count("\n") + 1)  # rendering keeps the line count
    script = render(template, RUNFILE_NAME=RUNFILE_NAME, PAYLOAD_LINE=payload_line,
                    DRIVER_VERSION=DRIVER_VERSION, CUDA_SERIES=TOOLKIT.series)  # fmt: skip
    runfile = output_dir / RUNFILE_NAME
    runfile.write_text(script + encoded)
    runfile.chmod(0o755)
    return runfile


# --------------------------------------------------------------------------------------------
# The cuDNN archive
# --------------------------------------------------------------------------------------------


def static_library(version: str) -> bytes:
    """A real (deterministic) ar archive of the stand-in library's object."""
    with tempfile.TemporaryDirectory(prefix="gpufleet-static-") as scratch:
        obj, archive = Path(scratch) / "standin.o", Path(scratch) / "standin.a"
        run_command(["gcc", "-c", "-fPIC", "-O0", f'-DSTANDIN_VERSION="{version}"', "-o", str(obj),
                     str(PAYLOADS / "stub_library.c")])  # fmt: skip
        run_command(["ar", "rcD", str(archive), str(obj)])
        return archive.read_bytes()


def cudnn_header(name: str) -> str:
    if name == "cudnn_version":
        major, minor, patch = CUDNN_VERSION.split(".")
        return render(CUDNN_VERSION_HEADER, MAJOR=major, MINOR=minor, PATCH=patch)
    guard = name.upper() + "_H_"
    includes = "".join(f'#include "{header}.h"\n' for header in CUDNN_HEADERS[1:])
    body = f'#include "cudnn_version.h"\n{includes}' if name == "cudnn" else ""
    return (f"/* {name}.h of cuDNN {CUDNN_VERSION} (gpufleet stand-in: no API). */\n"
            f"#ifndef {guard}\n#define {guard}\n{body}#endif /* {guard} */\n")  # fmt: skip


def build_cudnn_archive(output_dir: Path) -> Path:
    """Write the stand-in CUDNN_ARCHIVE_NAME (cuda/include, cuda/lib64, the license) into
    ``output_dir``; the same inputs give the same bytes."""
    output_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[bytes, int]] = {
        f"cuda/{CUDNN_LICENSE}": (f"gpufleet stand-in for {CUDNN_LICENSE}.\n".encode(), 0o644),
        "cuda/lib64/libcudnn_static_v8.a": (static_library(CUDNN_VERSION), 0o644),
    }
    links = {"cuda/lib64/libcudnn_static.a": "libcudnn_static_v8.a"}
    for header in (*CUDNN_HEADERS, "cudnn_version"):
        files[f"cuda/include/{header}.h"] = (cudnn_header(header).encode(), 0o644)
    for library in CUDNN_LIBRARIES:
        soname, real = f"{library}.so.{CUDNN_MAJOR}", f"{library}.so.{CUDNN_VERSION}"
        files[f"cuda/lib64/{real}"] = (shared_library(soname, CUDNN_VERSION), 0o755)
        links[f"cuda/lib64/{soname}"] = real
        links[f"cuda/lib64/{library}.so"] = soname
    archive = output_dir / CUDNN_ARCHIVE_NAME
    with tempfile.TemporaryDirectory(prefix="gpufleet-cudnn-") as scratch:
        write_tree(Path(scratch), files, links)
        write_tgz(Path(scratch), archive)
    return archive


# --------------------------------------------------------------------------------------------
# Building and caching
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArtifactSet:
    """The built artifacts: their directory, file names and sha256 digests."""

    directory: Path
    runfile: str
    runfile_sha256: str
    cudnn_archive: str
    cudnn_archive_sha256: str

    def path(self, name: str) -> Path:
        return self.directory / name


def artifacts_digest() -> str:
    """Digest of everything the artifacts are built from: this module, its payloads, the nvcc
    and library sources of testbed/standin_payloads, and the values taken from standin_repo."""
    digest = hashlib.sha256()
    sources = [Path(__file__), PAYLOADS / "nvcc", PAYLOADS / "stub_library.c"]
    for path in [*sources, *sorted(ARTIFACT_PAYLOADS.rglob("*"))]:
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    digest.update(json.dumps([asdict(TOOLKIT), CUDNN_VERSION_HEADER]).encode())
    return digest.hexdigest()[:16]


def build_artifacts(cache_dir: Path) -> ArtifactSet:
    """The runfile and the cuDNN archive in ``cache_dir/artifacts/<digest>``, built once."""
    parent = cache_dir / "artifacts"

    def build(target: Path) -> None:
        target.mkdir(parents=True)
        built = [build_cuda_runfile(target), build_cudnn_archive(target)]
        sums = "".join(f"{file_sha256(path)}  {path.name}\n" for path in built)
        (target / SUMS_FILE).write_text(sums)

    with locked(parent / ".lock"):
        directory = built_atomically(parent / artifacts_digest(), build)
    lines = (directory / SUMS_FILE).read_text().splitlines()
    sums = {name: digest for digest, name in (line.split("  ", 1) for line in lines)}
    return ArtifactSet(
        directory, RUNFILE_NAME, sums[RUNFILE_NAME], CUDNN_ARCHIVE_NAME, sums[CUDNN_ARCHIVE_NAME]
    )


# --------------------------------------------------------------------------------------------
# docker save archives
# --------------------------------------------------------------------------------------------


def _add_bytes(tar: tarfile.TarFile, name: str, content: bytes) -> None:
    info = _normalized(tarfile.TarInfo(name))
    info.size, info.mode = len(content), 0o644
    tar.addfile(info, io.BytesIO(content))


def build_image_archive(rootfs_tarball: Path, tag: str, output: Path) -> Path:
    """A `docker save` archive (moby image spec v1.2) of one layer, ``rootfs_tarball`` (an
    uncompressed root filesystem tarball), tagged ``tag``; the tarball is streamed, not read in."""
    if ":" not in tag.rsplit("/", 1)[-1]:
        tag = f"{tag}:latest"
    repository, version = tag.rsplit(":", 1)
    diff_id = file_sha256(rootfs_tarball)
    runtime = {"Cmd": ["/bin/bash"], "Env": [f"PATH={IMAGE_PATH}"]}
    history = {"created": IMAGE_CREATED, "created_by": f"gpufleet testbed: {rootfs_tarball.name}"}
    config = {"architecture": "amd64", "os": "linux", "created": IMAGE_CREATED, "config": runtime,
              "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
              "history": [history]}  # fmt: skip
    config_bytes = json.dumps(config, sort_keys=True).encode()
    image_id = hashlib.sha256(config_bytes).hexdigest()
    layer = diff_id  # the layer directory: any 64-hex name (the spec's example uses v1 ids)
    legacy = {"id": layer, "created": IMAGE_CREATED, "os": "linux", "architecture": "amd64",
              "config": runtime}  # fmt: skip
    manifest = [{"Config": f"{image_id}.json", "RepoTags": [tag], "Layers": [f"{layer}/layer.tar"]}]
    temporary = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        with tarfile.open(temporary, "w", format=tarfile.PAX_FORMAT) as tar:
            directory = _normalized(tarfile.TarInfo(layer))
            directory.type, directory.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(directory)
            _add_bytes(tar, f"{layer}/VERSION", b"1.0")
            _add_bytes(tar, f"{layer}/json", json.dumps(legacy, sort_keys=True).encode())
            with rootfs_tarball.open("rb") as stream:
                info = _normalized(tarfile.TarInfo(f"{layer}/layer.tar"))
                info.size, info.mode = rootfs_tarball.stat().st_size, 0o644
                tar.addfile(info, stream)
            _add_bytes(tar, f"{image_id}.json", config_bytes)
            _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
            _add_bytes(tar, "repositories", json.dumps({repository: {version: layer}}).encode())
        temporary.rename(output)
    finally:
        temporary.unlink(missing_ok=True)
    return output


# --------------------------------------------------------------------------------------------
# Serving to a fleet
# --------------------------------------------------------------------------------------------


class ArtifactServer:
    """Serves ``directory`` (and ``extra_files``, by name) over HTTP at ``host``:``port`` in the
    fleet's controller namespace, where its hosts fetch from; counts the requests per file.

        with ArtifactServer(fleet, artifacts.directory) as server:
            url = server.url(RUNFILE_NAME)
    """

    def __init__(
        self,
        fleet: Fleet,
        directory: Path,
        extra_files: Mapping[str, Path] | None = None,
        host: str = REPO_HOST,
        port: int = ARTIFACT_PORT,
        start_timeout: float = 10.0,
    ) -> None:
        self.fleet = fleet
        self.directory = directory
        self.extra_files = dict(extra_files or {})
        self.host, self.port, self.start_timeout = host, port, start_timeout
        self.root = fleet.run_dir / f"artifacts-{port}"
        self.log = fleet.run_dir / f"artifacts-{port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ArtifactServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Assemble the served directory from symlinks, start the server, wait for its banner."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.log.write_text("")  # counts start from this start
        served = {path.name: path for path in self.directory.iterdir() if path.is_file()}
        for name, path in {**served, **self.extra_files}.items():
            (self.root / name).unlink(missing_ok=True)
            (self.root / name).symlink_to(path.resolve())
        self.process = start_http_server(
            self.fleet.controller.command,
            self.root,
            (self.host, self.port),
            self.log,
            self.start_timeout,
        )

    def stop(self) -> None:
        if self.process is None:
            return
        stop_process(self.process)
        self.process = None

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.port}/{name}"

    def requests_for(self, name: str) -> int:
        """How many GET requests for ``name`` the server logged (whatever their answer)."""
        if not self.log.exists():
            return 0
        return sum(f'"GET /{name} ' in line for line in self.log.read_text().splitlines())
