"""
Fact about the cuDNN version whose development headers are installed.
"""

from __future__ import annotations

import re
import shlex

from pyinfra.api import FactBase

# First existing wins: cuDNN 8+ (deb install, alternatives symlink and its target), then cuDNN 7,
# which kept the version defines in cudnn.h, then cuDNN unpacked from NVIDIA's archive into the
# default toolkit.
CUDNN_HEADERS = (
    "/usr/include/cudnn_version.h",
    "/usr/include/x86_64-linux-gnu/cudnn_version_v8.h",
    "/usr/include/cudnn.h",
    "/usr/local/cuda/include/cudnn_version.h",
)


def parse_cudnn_version_header(text: str) -> str | None:
    """
    Read ``CUDNN_MAJOR``/``CUDNN_MINOR``/``CUDNN_PATCHLEVEL`` -> ``"8.1.1"``. These three stay
    the same in cuDNN 9, which only changed how CUDNN_VERSION is computed from them.
    """
    parts = []
    for name in ("MAJOR", "MINOR", "PATCHLEVEL"):
        match = re.search(rf"^\s*#\s*define\s+CUDNN_{name}\s+(\d+)\b", text, re.MULTILINE)
        if not match:
            return None
        parts.append(match.group(1))
    return ".".join(parts)


class CudnnVersion(FactBase[str | None]):
    """
    Returns the cuDNN version from the first existing header of CUDNN_HEADERS, e.g. ``"8.1.1"``,
    or None when no cuDNN headers are installed.
    """

    def command(self) -> str:
        headers = " ".join(shlex.quote(header) for header in CUDNN_HEADERS)
        return (
            f"for header in {headers}; do "
            'if [ -f "$header" ]; then '
            "grep -E 'define[[:space:]]+CUDNN_(MAJOR|MINOR|PATCHLEVEL)' \"$header\"; break; fi; "
            "done; true"
        )

    def process(self, output: list[str]) -> str | None:
        return parse_cudnn_version_header("\n".join(output))
