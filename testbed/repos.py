"""The tree of signed repositories a test fleet serves: NVIDIA's stand-ins and the OS mirrors.

The fleet serves ``RepoTree.root`` at http://10.213.0.1:8080/:

    keys/gpufleet-test.asc                          the test archive key (armored)
    keys/gpufleet-test-2026.asc                     the second key, standing for NVIDIA's 8793F200
    cuda/repos/<directory>/x86_64/                  CUDA repository of each CUDA_DIRECTORIES entry,
                                                    with its key file (cuda_key_path)
    libnvidia-container/gpgkey                      the archive key, at the real key's place
    libnvidia-container/stable/deb/nvidia-container-toolkit.list
    libnvidia-container/stable/deb/amd64/           container toolkit repository
    os/<release>/                                   subset of the release's archive
                                                    + linux-headers-$(uname -r) (testbed.os_mirror)

The test archive key signs the OS mirrors, the container repository and every CUDA directory but
those of SECOND_KEY_DIRECTORIES, which the second key signs. Both are throwaway keys kept with
the cache. Every repository is flat; apt on the hosts verifies it through signed-by, never
trusted=yes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from testbed import os_mirror, rootfs, standin_repo
from testbed.os_mirror import OS_KEYRING_ON_HOST, build_os_part, mirror_path
from testbed.os_releases import OsRelease
from testbed.rootfs import (
    build_rootfs,
    built_atomically,
    locked,
    os_release,
    upstream_sources,
)
from testbed.standin_repo import (
    CONTAINER_REPO_PATH,
    CUDA_DIRECTORIES,
    PAYLOADS,
    REPO_URL,
    SECOND_KEY_DIRECTORIES,
    ArchiveKey,
    build_nvidia_part,
    cuda_key_path,
    cuda_repo_path,
)

KEY_FILE = "keys/gpufleet-test.asc"
SECOND_KEY_FILE = "keys/gpufleet-test-2026.asc"
CONTAINER_KEY_PATH = "libnvidia-container/gpgkey"
# OS mirrors built at once: their downloads wait on the network, not on the CPUs.
PARALLEL_OS_PARTS = 3


@dataclass(frozen=True)
class RepoTree:
    """A built tree of signed stand-in repositories and the keys that sign them."""

    root: Path
    key_path: Path
    key_fingerprint: str
    second_key_path: Path
    second_key_fingerprint: str

    def os_source_line(self, release: OsRelease | str) -> str:
        """The apt source line of the release's mirror, as a host of that release has it."""
        release = os_release(release)
        if not (self.root / mirror_path(release)).is_dir():
            raise ValueError(f"this repository tree has no mirror of {release.name}")
        return f"deb [signed-by={OS_KEYRING_ON_HOST}] {REPO_URL}{mirror_path(release)} /"

    def os_keyring_path_on_host(self) -> str:
        return OS_KEYRING_ON_HOST

    def cuda_repo_url(self, directory: str) -> str:
        """The stand-in of NVIDIA's CUDA repository ``directory`` (e.g. "ubuntu2004")."""
        return REPO_URL + cuda_repo_path(known_cuda_directory(directory))

    def cuda_key_url(self, directory: str) -> str:
        """The key file the directory publishes, under NVIDIA's name for it."""
        return REPO_URL + cuda_key_path(known_cuda_directory(directory))

    def cuda_key_fingerprint(self, directory: str) -> str:
        """The fingerprint of the key that signs the directory."""
        if known_cuda_directory(directory) in SECOND_KEY_DIRECTORIES:
            return self.second_key_fingerprint
        return self.key_fingerprint

    @property
    def container_repo_url(self) -> str:
        return REPO_URL + CONTAINER_REPO_PATH

    @property
    def container_key_url(self) -> str:
        return REPO_URL + CONTAINER_KEY_PATH

    @property
    def container_key_fingerprint(self) -> str:
        return self.key_fingerprint


def known_cuda_directory(directory: str) -> str:
    if directory not in CUDA_DIRECTORIES:
        raise ValueError(
            f"no stand-in of NVIDIA's CUDA directory {directory!r}, "
            f"expected one of {', '.join(CUDA_DIRECTORIES)}"
        )
    return directory


def sources_digest(*extra: object) -> str:
    """Digest of the modules and payloads the tree is built from, and ``extra``: a cache key."""
    digest = hashlib.sha256()
    # rootfs.py is not among them: each OS part's key names its root filesystem's cache entry.
    for module in (standin_repo, os_mirror):
        digest.update(Path(str(module.__file__)).read_bytes())
    digest.update(Path(__file__).read_bytes())
    for path in sorted(PAYLOADS.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(PAYLOADS)).encode())
            digest.update(path.read_bytes())
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def link_tree(source: Path, destination: Path) -> None:
    """Hard-link copy: the tree costs no space beyond its parts."""
    shutil.copytree(source, destination, copy_function=os.link, dirs_exist_ok=True)


def build_repos(
    cache_dir: Path,
    releases: list[OsRelease] | list[str],
    rootfs_cache_dir: Path | None = None,
) -> RepoTree:
    """Build (or reuse) the signed repositories with the mirrors of ``releases``.

    Each release's mirror is built from the upstream its root filesystem was built from, so the
    root filesystems are built first (cached in ``rootfs_cache_dir``, by default where the
    fleets keep them: testbed.rootfs.default_cache_dir()). Parts are cached under ``cache_dir``
    by a digest of everything they are built from (the testbed's modules and payloads, the keys,
    the release and its root filesystem, the running kernel) and renamed into place only when
    complete.
    """
    wanted = sorted({os_release(release) for release in releases}, key=lambda r: r.name)
    cache_dir = cache_dir.resolve()
    rootfs_cache = (rootfs_cache_dir or rootfs.default_cache_dir()).resolve()
    key = ArchiveKey(cache_dir / "gnupg")
    second_key = ArchiveKey(cache_dir / "gnupg-2026")
    kernel = platform.release()
    # What each mirror is built from: the release's tree (its cache entry names its recipe) and
    # the apt sources mmdebstrap chose for it.
    roots = {release.name: build_rootfs(release, rootfs_cache) for release in wanted}
    origins = {
        release.name: {
            "rootfs": roots[release.name].parent.name,
            "upstream": [asdict(source) for source in upstream_sources(roots[release.name])],
        }
        for release in wanted
    }

    def tree_for(fingerprint: str, second_fingerprint: str) -> Path:
        digest = sources_digest(fingerprint, second_fingerprint, kernel, origins)
        return cache_dir / "trees" / digest

    def repo_tree(tree: Path, fingerprint: str, second_fingerprint: str) -> RepoTree:
        # The copies in the tree: readable by apt's sandbox user, unlike the private GNUPGHOMEs.
        return RepoTree(
            tree, tree / KEY_FILE, fingerprint, tree / SECOND_KEY_FILE, second_fingerprint
        )

    existing = (key.fingerprint, second_key.fingerprint)
    if existing[0] is not None and existing[1] is not None:
        tree = tree_for(existing[0], existing[1])
        if tree.exists():
            return repo_tree(tree, existing[0], existing[1])
    with locked(cache_dir / ".lock"):
        fingerprint = key.ensure()
        second_fingerprint = second_key.ensure()
        parts = cache_dir / "parts"
        parts.mkdir(parents=True, exist_ok=True)

        def os_part(release: OsRelease) -> Path:
            digest = sources_digest(fingerprint, kernel, release.name, origins[release.name])
            return built_atomically(
                parts / f"os-{release.name}-{digest}",
                lambda part: build_os_part(
                    release,
                    upstream_sources(roots[release.name]),
                    part,
                    key,
                    cache_dir / "downloads" / release.name,
                ),
            )

        try:
            nvidia = built_atomically(
                parts / f"nvidia-{sources_digest(fingerprint, second_fingerprint)}",
                lambda part: build_nvidia_part(part, key, second_key),
            )
            with ThreadPoolExecutor(max_workers=PARALLEL_OS_PARTS) as pool:
                mirrors = list(pool.map(os_part, wanted))
        finally:
            key.stop_agent()
            second_key.stop_agent()

        def assemble(tree: Path) -> None:
            for part in (nvidia, *mirrors):
                link_tree(part, tree)
            (tree / KEY_FILE).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(key.public_key, tree / KEY_FILE)
            shutil.copyfile(second_key.public_key, tree / SECOND_KEY_FILE)

        tree = built_atomically(tree_for(fingerprint, second_fingerprint), assemble)
    return repo_tree(tree, fingerprint, second_fingerprint)


def default_cache_dir() -> Path:
    """Where the unit tests keep built repositories between runs (GPUFLEET_CACHE_DIR overrides)."""
    configured = os.environ.get("GPUFLEET_CACHE_DIR")
    if configured:
        return Path(configured) / "standin-repos"
    return Path.home() / ".cache" / "gpufleet" / "standin-repos"
