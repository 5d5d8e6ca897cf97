"""Fixtures for end-to-end tests against booted test hosts (testbed)."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from testbed.fleet import DEFAULT_BOOT_TIMEOUT, DEFAULT_FLEET_OS, Fleet, FleetFactory, OsReleases
from testbed.network import cleanup_stale
from testbed.os_releases import OS_RELEASES
from testbed.repos import RepoTree, build_repos
from testbed.rootfs import default_cache_dir

REQUIRED_TOOLS = ("systemd-nspawn", "mmdebstrap", "nsenter", "ssh", "ssh-keygen")


def _missing_requirement() -> str | None:
    if os.geteuid() != 0 or any(shutil.which(tool) is None for tool in REQUIRED_TOOLS):
        return "needs root and systemd-nspawn"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = _missing_requirement()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("e2e") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session", autouse=True)
def _clean_test_hosts() -> Iterator[None]:
    """Remove leftovers of killed runs; make SIGTERM tear fleets down like Ctrl-C does."""
    if _missing_requirement() is not None:
        yield
        return
    cleanup_stale()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    path = default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def repo_tree(cache_dir: Path) -> RepoTree:
    """The repositories with the mirrors of all six OS releases (built once, then cached)."""
    return build_repos(cache_dir / "repos", list(OS_RELEASES.values()), rootfs_cache_dir=cache_dir)


@pytest.fixture
def fleet_factory(cache_dir: Path, repo_tree: RepoTree) -> Iterator[FleetFactory]:
    """``fleet_factory(count=2, os_release="debian11")`` opens a Fleet that closes at teardown."""
    fleets: list[Fleet] = []

    def open_fleet(
        count: int = 1,
        os_release: OsReleases = DEFAULT_FLEET_OS,
        boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
    ) -> Fleet:
        fleet = Fleet(count, os_release, cache_dir, repo=repo_tree, boot_timeout=boot_timeout)
        fleets.append(fleet)
        return fleet.__enter__()

    yield open_fleet
    errors = []
    for fleet in reversed(fleets):
        try:
            fleet.close()
        except RuntimeError as error:
            errors.append(str(error))
    assert not errors, "\n".join(errors)
