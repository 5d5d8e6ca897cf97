"""
Whole-file contents managed in one round trip: the files gpufleet owns are small (keyrings, apt
sources, modprobe, profile.d, ld.so.conf.d), so a digest comparison is the whole check. And
symbolic links, checked by their target.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from collections.abc import Iterator, Mapping, Sequence

from pyinfra import host
from pyinfra.api import FileUploadCommand, OperationError, QuoteString, StringCommand, operation
from pyinfra.api.command import PyinfraCommand

from gpufleet.facts import snapshot
from gpufleet.facts.files import FileDigests, SymlinkTargets


def upload_changed(files: Mapping[str, bytes], mode: str) -> Iterator[PyinfraCommand]:
    """Commands that bring each path to its contents; nothing for paths that already match."""
    digests = snapshot.current(FileDigests, paths=sorted(files))
    changed = {
        path: data
        for path, data in files.items()
        if digests.get(path) != hashlib.sha256(data).hexdigest()
    }
    if not changed:
        return
    directories = sorted({posixpath.dirname(path) for path in changed})
    yield StringCommand("mkdir", "-p", *(QuoteString(d) for d in directories))
    if int(mode, 8) & 0o077 == 0:
        # A private file (credentials) is created with its mode before its contents arrive:
        # the upload writes into it, so it is never readable by others, not even for a moment.
        for path in sorted(changed):
            yield StringCommand("install", "-m", mode, "/dev/null", QuoteString(path))
    for path, data in sorted(changed.items()):
        yield FileUploadCommand(
            io.BytesIO(data), path, remote_temp_filename=host.get_temp_filename(path)
        )
    yield StringCommand("chmod", mode, *(QuoteString(path) for path in sorted(changed)))


@operation()
def contents(files: Mapping[str, str | bytes], mode: str = "644"):
    """
    Make each file hold exactly the given contents.

    + files: path -> contents (text is written as UTF-8)
    + mode: octal mode for files that are written
    """
    encoded = {
        path: data.encode() if isinstance(data, str) else data for path, data in files.items()
    }
    commands = list(upload_changed(encoded, mode))
    if not commands:
        host.noop(f"{len(files)} file(s) already up to date")
        return
    yield from commands


@operation()
def link(path: str, target: str):
    """
    Make ``path`` a symbolic link to ``target``, like pyinfra's files.link: a link pointing
    elsewhere is replaced, anything else at ``path`` is an error.

    + path: the link
    + target: where it points
    """
    targets = snapshot.current(SymlinkTargets, paths=[path])
    if path in targets and targets[path] is None:
        raise OperationError(f"{path} exists and is not a link")
    if targets.get(path) == target:
        host.noop(f"link {path} already exists")
        return
    yield StringCommand("mkdir", "-p", QuoteString(posixpath.dirname(path)))
    yield StringCommand("ln", "-sfn", QuoteString(target), QuoteString(path))


@operation()
def absent(files: Sequence[str], links: Sequence[str] = ()):
    """
    Remove the files and symbolic links that exist.

    + files: regular files
    + links: symbolic links
    """
    present = [
        *snapshot.current(FileDigests, paths=sorted(files)),
        *snapshot.current(SymlinkTargets, paths=sorted(links)),
    ]
    if not present:
        host.noop(f"{len(files) + len(links)} path(s) already absent")
        return
    yield StringCommand("rm", "-f", *(QuoteString(path) for path in sorted(present)))
