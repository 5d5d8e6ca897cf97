"""
Digests of small managed files, so one round trip tells which of them differ from what we want.
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase


class FileDigests(FactBase[dict[str, str]]):
    """
    Returns the SHA-256 of each given path that is a regular file (absent paths are left out).

    .. code:: python

        {"/etc/apt/keyrings/cuda.gpg": "9f86d0...", ...}
    """

    def command(self, paths: list[str]) -> str:
        quoted = " ".join(shlex.quote(path) for path in paths)
        # sha256sum prints the files it can read and fails for the others: both are answers.
        return f"sha256sum -- {quoted} 2>/dev/null || true"

    @staticmethod
    def default() -> dict[str, str]:
        return {}

    def process(self, output: list[str]) -> dict[str, str]:
        digests = {}
        for line in output:
            digest, _, path = line.partition("  ")
            if path:
                digests[path] = digest
        return digests
