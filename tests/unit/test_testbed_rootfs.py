"""The testbed's root filesystem builder reads apt sources back as mmdebstrap writes them, trusts
only Ubuntu's 2018 archive key for Ubuntu, and refuses a suite distro-info-data does not know."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from testbed import rootfs
from testbed.os_releases import OS_RELEASES, OsRelease
from testbed.rootfs import (
    AptSource,
    check_distro_info,
    checked_ubuntu_key,
    key_fingerprints,
    parse_deb822_sources,
    parse_one_line_sources,
    read_apt_sources,
)

needs_gpg = pytest.mark.skipif(shutil.which("gpg") is None, reason="needs gpg")

# What mmdebstrap 1.3.5 writes for jammy (one-line format), the options of another writer kept.
ONE_LINE = """\
deb http://archive.example.invalid/ubuntu jammy main universe
deb [signed-by="/usr/share/keyrings/x.gpg" arch=amd64] http://archive.example.invalid/ubuntu/ \
jammy-updates main universe
# deb http://commented.example.invalid/ubuntu jammy main
deb-src http://archive.example.invalid/ubuntu jammy main
deb http://security.example.invalid/ubuntu jammy-security main universe  # security
"""
# A deb822 file as Ubuntu 24.04's installer and Debian 13 write them.
DEB822 = """\
Types: deb deb-src
URIs: http://archive.example.invalid/ubuntu/
Suites: noble noble-updates
Components: main universe
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg

# The security pocket.
Types: deb
URIs: http://security.example.invalid/ubuntu/
Suites: noble-security
Components: main
 universe

Types: deb
Enabled: no
URIs: http://disabled.example.invalid/ubuntu/
Suites: noble-proposed
Components: main
"""


def test_one_line_sources_keep_uri_suite_and_components_only() -> None:
    assert parse_one_line_sources(ONE_LINE) == [
        AptSource("http://archive.example.invalid/ubuntu", "jammy", ("main", "universe")),
        AptSource("http://archive.example.invalid/ubuntu", "jammy-updates", ("main", "universe")),
        AptSource("http://security.example.invalid/ubuntu", "jammy-security", ("main", "universe")),
    ]


def test_deb822_sources_expand_every_uri_and_suite_of_enabled_deb_stanzas() -> None:
    archive, security = (
        "http://archive.example.invalid/ubuntu",
        "http://security.example.invalid/ubuntu",
    )
    assert parse_deb822_sources(DEB822) == [
        AptSource(archive, "noble", ("main", "universe")),
        AptSource(archive, "noble-updates", ("main", "universe")),
        AptSource(security, "noble-security", ("main", "universe")),
    ]


def test_a_trees_sources_are_read_from_both_formats(tmp_path: Path) -> None:
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list").write_text(ONE_LINE)
    (tmp_path / "etc/apt/sources.list.d/ubuntu.sources").write_text(DEB822)
    (tmp_path / "etc/apt/sources.list.d/ignored.save").write_text(ONE_LINE)
    assert [source.suite for source in read_apt_sources(tmp_path)] == [
        "jammy", "jammy-updates", "jammy-security", "noble", "noble-updates", "noble-security",
    ]  # fmt: skip
    assert AptSource("http://x.invalid/debian", "trixie", ("main",)).line("/k.gpg") == (
        "deb [signed-by=/k.gpg] http://x.invalid/debian trixie main"
    )


@needs_gpg
def test_the_vendored_ubuntu_key_is_the_2018_archive_key() -> None:
    assert key_fingerprints(rootfs.UBUNTU_ARCHIVE_KEY) == [rootfs.UBUNTU_ARCHIVE_KEY_FINGERPRINT]
    assert checked_ubuntu_key() == rootfs.UBUNTU_ARCHIVE_KEY.read_bytes()


@needs_gpg
def test_any_other_key_in_its_place_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--passphrase", "", "--pinentry-mode"]
    subprocess.run(
        [*gpg, "loopback", "--quick-gen-key", "impostor <x@invalid>", "ed25519", "sign", "never"],
        check=True,
        capture_output=True,
    )
    impostor = tmp_path / "ubuntu-archive-keyring-2018.asc"
    impostor.write_bytes(
        subprocess.run(
            ["gpg", "--homedir", str(home), "--armor", "--export"], check=True, capture_output=True
        ).stdout
    )
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
    monkeypatch.setattr(rootfs, "UBUNTU_ARCHIVE_KEY", impostor)

    with pytest.raises(RuntimeError, match="is not Ubuntu's 2018 archive key"):
        checked_ubuntu_key()
    with pytest.raises(RuntimeError, match="is not Ubuntu's 2018 archive key"):
        rootfs.archive_keyring(OS_RELEASES["ubuntu24.04"])


def test_a_suite_distro_info_does_not_list_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ubuntu.csv").write_text(
        "version,codename,series,created,release,eol\n"
        "22.04 LTS,Jammy Jellyfish,jammy,2021-10-14,2022-04-21,2027-06-01\n"
    )
    monkeypatch.setattr(rootfs, "DISTRO_INFO", tmp_path)
    check_distro_info(OS_RELEASES["ubuntu22.04"])
    future = OsRelease("ubuntu26.04", "ubuntu", "26.04", "resolute", ("main",), "ubuntu2604", "3")
    with pytest.raises(RuntimeError, match="does not list resolute"):
        check_distro_info(future)
    with pytest.raises(RuntimeError, match="debian.csv does not list trixie"):
        check_distro_info(OS_RELEASES["debian13"])


def test_unknown_release_names_list_the_known_ones() -> None:
    with pytest.raises(ValueError, match="ubuntu20.04, ubuntu22.04, ubuntu24.04, debian11"):
        rootfs.os_release("ubuntu18.04")
