"""
Vendor artifacts on the host: received from the controller into HOST_ARTIFACT_DIR/<sha256>,
checked against their pinned sha256 again right before use, then run or unpacked: NVIDIA's CUDA
runfile (the toolkit only), the cuDNN tar archive (into the toolkit folder) and a `docker save`
archive of the TensorFlow image.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FileUploadCommand, QuoteString, StringCommand, operation

from gpufleet.facts import snapshot
from gpufleet.facts.cuda import CudaToolkits, ToolkitFiles
from gpufleet.facts.docker import DockerImageId
from gpufleet.facts.files import FolderFiles
from gpufleet.stack import installers
from gpufleet.stack.installers import HOST_ARTIFACT_DIR, HOST_LOG_DIR, HOST_SCRATCH_DIR


def artifact_path(sha256: str) -> str:
    return f"{HOST_ARTIFACT_DIR}/{sha256}"


def checked(path: str, sha256: str) -> str:
    """Shell: fails, saying so, unless ``path`` has the pinned digest."""
    quoted = shlex.quote(path)
    return (
        f"echo {shlex.quote(f'{sha256}  {path}')} | sha256sum --check --status || "
        f'{{ echo "{path}: sha256 $(sha256sum < {quoted} | cut -c1-64), not the pinned '
        f'{sha256}" >&2; false; }}'
    )


@operation()
def received(local_path: str | None, sha256: str):
    """
    The artifact sent from the controller's cache, kept on the host by its digest.

    + local_path: the verified file on the controller; None when the host needs none sent
    + sha256: its digest, checked again on the host before the file takes its name
    """
    if sha256 in snapshot.current(FolderFiles, path=HOST_ARTIFACT_DIR):
        host.noop(f"the host already has artifact {sha256[:12]}")
        return
    if local_path is None:
        host.noop(f"artifact {sha256[:12]} is not needed: what it installs is in place")
        return
    final = artifact_path(sha256)
    part = f"{final}.part"
    yield StringCommand("install", "-d", "-m", "700", HOST_ARTIFACT_DIR)
    yield FileUploadCommand(local_path, part, remote_temp_filename=host.get_temp_filename(part))
    yield f"{checked(part, sha256)} || {{ rm -f {part}; exit 1; }}; mv {part} {final}"


@operation()
def runfile_toolkit(sha256: str, package_version: str):
    """
    The CUDA toolkit from NVIDIA's runfile, never its bundled driver; its output goes to a log
    under /var/log/gpufleet, whose end is shown when it fails.

    + sha256: the runfile's digest (the file is HOST_ARTIFACT_DIR/<sha256>)
    + package_version: the toolkit release it holds, e.g. "11.2.2"
    """
    series = ".".join(package_version.split(".")[:2])
    path = installers.toolkit_path(series)
    files = snapshot.current(ToolkitFiles, path=path)
    toolkit = snapshot.current(CudaToolkits)["toolkits"].get(series)
    if installers.runfile_toolkit_installed(
        files["cuda_version"],
        toolkit["nvcc_release"] if toolkit else None,
        files["libraries"],
        package_version,
    ):
        host.noop(f"CUDA {package_version} is installed in {path}")
        return
    runfile = artifact_path(sha256)
    log = f"{HOST_LOG_DIR}/cuda-runfile-{package_version}.log"
    options = [
        *installers.RUNFILE_TOOLKIT_OPTIONS,
        f"--toolkitpath={path}",
        f"--tmpdir={HOST_SCRATCH_DIR}",
    ]
    yield StringCommand("mkdir", "-p", HOST_LOG_DIR, HOST_SCRATCH_DIR)
    yield (
        f"{checked(runfile, sha256)} || exit 1; "
        f"sh {shlex.join([runfile, *options])} >{log} 2>&1 || "
        f'{{ status=$?; tail -n 25 {log}; echo "the CUDA runfile failed (exit $status), its log: '
        f'{log}" >&2; exit 1; }}'
    )


@operation()
def archive_cudnn(sha256: str, cudnn_version: str, cuda_version: str):
    """
    cuDNN from NVIDIA's tar archive: its headers into the toolkit's include/, its libraries
    with their links into its lib64/, replacing every cuDNN file there; nothing outside it.

    + sha256: the archive's digest (the file is HOST_ARTIFACT_DIR/<sha256>)
    + cudnn_version: the pinned cuDNN, e.g. "8.1.1.33"
    + cuda_version: the toolkit it goes into, e.g. "11.2"
    """
    path = installers.toolkit_path(cuda_version)
    files = snapshot.current(ToolkitFiles, path=path)
    if installers.archive_cudnn_installed(
        files["cudnn_version"], files["libraries"], cudnn_version
    ):
        host.noop(f"cuDNN {cudnn_version} is installed in {path}")
        return
    archive = artifact_path(sha256)
    folder = shlex.quote(path)
    yield StringCommand("mkdir", "-p", HOST_SCRATCH_DIR)
    yield (
        f"{checked(archive, sha256)} || exit 1; "
        f"scratch=$(mktemp -d {HOST_SCRATCH_DIR}/cudnn.XXXXXX) && trap 'rm -rf \"$scratch\"' EXIT; "
        f'tar -xzf {archive} -C "$scratch" --no-same-owner || exit 1; '
        # cuDNN 8.1 unpacks into cuda/{include,lib64}; later archives into <name>/{include,lib}.
        "header=$(find \"$scratch\" -path '*/include/cudnn_version.h' | head -n 1); "
        f'[ -n "$header" ] || {{ echo "{archive} holds no include/cudnn_version.h: not a cuDNN '
        'archive" >&2; exit 1; }; '
        'root=$(dirname "$(dirname "$header")"); lib="$root/lib64"; '
        '[ -d "$lib" ] || lib="$root/lib"; '
        f"rm -f {folder}/include/cudnn*.h {folder}/lib64/libcudnn*; "
        f'cp -P "$root"/include/cudnn*.h {folder}/include/ && '
        f'cp -P "$lib"/libcudnn* {folder}/lib64/'
    )


@operation()
def loaded_image(image: str, sha256: str):
    """
    ``image`` loaded from a `docker save` archive where docker does not have it.

    + image: the reference the archive must hold, e.g. tensorflow/tensorflow:2.9.0-gpu
    + sha256: the archive's digest (the file is HOST_ARTIFACT_DIR/<sha256>)
    """
    if snapshot.current(DockerImageId, image=image):
        host.noop(f"docker has {image}")
        return
    archive = artifact_path(sha256)
    quoted = shlex.quote(image)
    yield (
        f"{checked(archive, sha256)} || exit 1; docker load --input {archive} || exit 1; "
        f"docker image inspect {quoted} >/dev/null 2>&1 || "
        f'{{ echo "{archive} does not hold the image "{quoted} >&2; exit 1; }}'
    )


@operation()
def pulled_image(image: str, timeout: int, registry_mirror: str | None = None):
    """
    ``image`` pulled where docker does not have it: a step of its own, so an unreachable
    registry is named here (verification never pulls).

    + image: the reference, e.g. tensorflow/tensorflow:2.9.0-gpu
    + timeout: seconds the pull may take before it is stopped
    + registry_mirror: pull ``<registry_mirror>/<image>`` instead (host[:port][/path]) and tag
      it as ``image``
    """
    if snapshot.current(DockerImageId, image=image):
        host.noop(f"docker has {image}")
        return
    source = f"{registry_mirror}/{image}" if registry_mirror else image
    # --quiet: one line per layer would drown the log; docker's error stays on stderr.
    yield StringCommand("timeout", str(timeout), "docker", "pull", "--quiet", QuoteString(source))
    if registry_mirror:
        yield StringCommand("docker", "tag", QuoteString(source), QuoteString(image))
