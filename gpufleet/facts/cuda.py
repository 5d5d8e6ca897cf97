"""
Facts about the CUDA toolkits installed under /usr/local.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import TypedDict

from pyinfra.api import FactBase

from gpufleet.facts.cudnn import parse_cudnn_version_header

CUDA_ROOT = "/usr/local"


class CudaToolkit(TypedDict):
    path: str
    nvcc_release: str | None


class CudaToolkitsInfo(TypedDict):
    toolkits: dict[str, CudaToolkit]
    default_path: str | None


def parse_nvcc_release(text: str) -> str | None:
    """``Cuda compilation tools, release 11.2, V11.2.152`` -> ``"11.2"``."""
    match = re.search(r"Cuda compilation tools, release (\d+\.\d+)", text)
    return match.group(1) if match else None


def parse_cuda_toolkits(output: list[str]) -> CudaToolkitsInfo:
    """Parse the tab-separated ``toolkit``/``default`` lines of ``CudaToolkits().command()``."""
    info: CudaToolkitsInfo = {"toolkits": {}, "default_path": None}
    for line in output:
        kind, _, rest = line.partition("\t")
        if kind == "toolkit":
            path, _, nvcc_line = rest.partition("\t")
            version = path.removeprefix(f"{CUDA_ROOT}/cuda-")
            info["toolkits"][version] = {
                "path": path,
                "nvcc_release": parse_nvcc_release(nvcc_line),
            }
        elif kind == "default" and rest:
            info["default_path"] = rest
    return info


class CudaToolkits(FactBase[CudaToolkitsInfo]):
    """
    Returns the toolkits in /usr/local/cuda-<version> with the release their nvcc reports (None
    where nvcc is missing, e.g. runtime-only installs), and where /usr/local/cuda points.
    """

    def command(self) -> str:
        return (
            f"for dir in {CUDA_ROOT}/cuda-*; do "
            # /usr/local/cuda-11 and the like are alternatives links to a real toolkit directory.
            '[ -d "$dir" ] && [ ! -L "$dir" ] || continue; '
            "printf 'toolkit\\t%s\\t%s\\n' \"$dir\" "
            '"$("$dir/bin/nvcc" --version 2>/dev/null | grep \'Cuda compilation tools\')"; '
            "done; "
            f"if [ -e {CUDA_ROOT}/cuda ]; then "
            f"printf 'default\\t%s\\n' \"$(readlink -f {CUDA_ROOT}/cuda)\"; fi; true"
        )

    @staticmethod
    def default() -> CudaToolkitsInfo:
        return parse_cuda_toolkits([])

    def process(self, output: list[str]) -> CudaToolkitsInfo:
        return parse_cuda_toolkits(output)


class ToolkitFilesInfo(TypedDict):
    cuda_version: str | None  # what version.json says the toolkit is, e.g. "11.2.2"
    runfile_uninstaller: bool  # bin/cuda-uninstaller: the runfile installed it
    cudnn_version: str | None  # include/cudnn_version.h: cuDNN from NVIDIA's archive
    libraries: dict[str, str | None]  # lib64's libcudart*/libcudnn*: name -> link target


def parse_version_json(text: str) -> str | None:
    """The toolkit release of a CUDA version.json (``{"cuda": {"version": "11.2.2"}, ...}``)."""
    try:
        document = json.loads(text)
        version = document["cuda"]["version"]
    except (ValueError, KeyError, TypeError):
        return None
    return version if isinstance(version, str) else None


def parse_toolkit_files(output: list[str]) -> ToolkitFilesInfo:
    """Parse the tab-separated lines of ``ToolkitFiles().command()``."""
    info: ToolkitFilesInfo = {
        "cuda_version": None,
        "runfile_uninstaller": False,
        "cudnn_version": None,
        "libraries": {},
    }
    header = []
    for line in output:
        kind, _, rest = line.partition("\t")
        if kind == "version_json":
            info["cuda_version"] = parse_version_json(rest)
        elif kind == "uninstaller":
            info["runfile_uninstaller"] = True
        elif kind == "cudnn_header":
            header.append(rest)
        elif kind == "library":
            name, _, target = rest.partition("\t")
            info["libraries"][name] = target or None
    info["cudnn_version"] = parse_cudnn_version_header("\n".join(header))
    return info


class ToolkitFiles(FactBase[ToolkitFilesInfo]):
    """
    Returns what is installed in one toolkit folder however it got there: the release its
    version.json names, whether NVIDIA's runfile installed it (its uninstaller), the version of
    the cuDNN headers in its include/, and its lib64's libcudart and libcudnn files (a link's
    target, None for a file).
    """

    def command(self, path: str) -> str:
        if not path:
            return "true"
        folder = shlex.quote(path)
        return (
            f"dir={folder}; "
            "if [ -f \"$dir/version.json\" ]; then printf 'version_json\\t'; "
            "tr -d '\\n' < \"$dir/version.json\"; echo; fi; "
            '[ -e "$dir/bin/cuda-uninstaller" ] && echo uninstaller; '
            "grep -E 'define[[:space:]]+CUDNN_(MAJOR|MINOR|PATCHLEVEL)' "
            "\"$dir/include/cudnn_version.h\" 2>/dev/null | sed 's/^/cudnn_header\\t/'; "
            'for file in "$dir"/lib64/libcudart.so* "$dir"/lib64/libcudnn*; do '
            '[ -e "$file" ] || [ -L "$file" ] || continue; '
            'printf \'library\\t%s\\t%s\\n\' "${file##*/}" "$(readlink "$file")"; done; true'
        )

    @staticmethod
    def default() -> ToolkitFilesInfo:
        return parse_toolkit_files([])

    def process(self, output: list[str]) -> ToolkitFilesInfo:
        return parse_toolkit_files(output)
