"""
Facts about the CUDA toolkits installed under /usr/local.
"""

from __future__ import annotations

import re
from typing import TypedDict

from pyinfra.api import FactBase

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
