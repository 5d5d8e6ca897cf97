"""
Digests of small managed files and the targets of managed links, so one round trip tells which
of them differ from what we want.
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

from gpufleet.facts.arguments import require_lists


class FileDigests(FactBase[dict[str, str]]):
    """
    Returns the SHA-256 of each given path that is a regular file (absent paths are left out).

    .. code:: python

        {"/etc/apt/keyrings/cuda.gpg": "9f86d0...", ...}
    """

    def command(self, paths: list[str]) -> str:
        require_lists(self, paths=paths)
        if not paths:
            # sha256sum without names would digest its stdin.
            return "true"
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


class SymlinkTargets(FactBase[dict[str, str | None]]):
    """
    Returns where each given path that is a symbolic link points, as the link says (not
    resolved), and None for a path that exists but is not a link (absent paths are left out).

    .. code:: python

        {"/etc/systemd/system/multi-user.target.wants/x.service": "/lib/systemd/system/x.service"}
    """

    default = dict

    def command(self, paths: list[str]) -> str:
        require_lists(self, paths=paths)
        quoted = " ".join(shlex.quote(path) for path in paths)
        return (
            f"for path in {quoted}; do "
            'if [ -L "$path" ]; then '
            'printf \'link\\t%s\\t%s\\n\' "$path" "$(readlink -- "$path")"; '
            'elif [ -e "$path" ]; then printf \'other\\t%s\\n\' "$path"; fi; done; true'
        )

    def process(self, output: list[str]) -> dict[str, str | None]:
        targets: dict[str, str | None] = {}
        for line in output:
            kind, _, rest = line.partition("\t")
            if kind == "link":
                path, _, target = rest.partition("\t")
                targets[path] = target
            elif kind == "other":
                targets[rest] = None
        return targets


class FolderFiles(FactBase[list[str]]):
    """
    Returns the names of the regular files directly in ``path`` (none when it does not exist).
    """

    default = list

    def command(self, path: str) -> str:
        if not path:
            return "true"
        return f"find {shlex.quote(path)} -maxdepth 1 -type f -printf '%f\\n' 2>/dev/null; true"

    def process(self, output: list[str]) -> list[str]:
        return sorted(line for line in output if line)
