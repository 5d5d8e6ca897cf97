"""
Facts about Debian packages: installed versions, holds, apt's sources and what apt offers.
"""

from __future__ import annotations

import shlex
from typing import TypedDict

from pyinfra.api import FactBase

from gpufleet.facts.arguments import require_lists
from gpufleet.stack.compat import AptOffer


class DebPackageState(TypedDict):
    version: str
    held: bool
    installed: bool


def parse_dpkg_query_states(output: list[str]) -> dict[str, DebPackageState]:
    """
    Parse ``dpkg-query -W -f '${Package}\\t${Version}\\t${Status}\\n'`` lines. ``Status`` is
    "<want> <error flag> <state>": want ``hold`` is apt-mark's hold, state ``installed`` the only
    fully installed one (``config-files`` is a removed package whose conffiles remain).
    """
    states: dict[str, DebPackageState] = {}
    for line in output:
        fields = line.split("\t")
        if len(fields) != 3:
            continue
        name, version, status = fields
        status_words = status.split()
        if len(status_words) != 3:
            continue
        want, _, state = status_words
        states[name] = {
            "version": version,
            "held": want == "hold",
            "installed": state == "installed",
        }
    return states


class DebPackageStates(FactBase[dict[str, DebPackageState]]):
    """
    Returns version, hold and installed state for each of ``packages`` dpkg knows about; names
    dpkg has never seen are left out.
    """

    default = dict

    def command(self, packages: list[str]) -> str:
        require_lists(self, packages=packages)
        if not packages:
            # dpkg-query -W without names would list every package.
            return "true"
        names = " ".join(shlex.quote(package) for package in packages)
        return (
            "dpkg-query -W -f '${Package}\\t${Version}\\t${Status}\\n' -- "
            f"{names} 2>/dev/null; true"
        )

    def process(self, output: list[str]) -> dict[str, DebPackageState]:
        return parse_dpkg_query_states(output)


def parse_showhold(output: list[str]) -> list[str]:
    return sorted(line.strip() for line in output if line.strip())


class HeldPackages(FactBase[list[str]]):
    """
    Returns the sorted names of packages held with ``apt-mark hold``.
    """

    default = list

    def command(self) -> str:
        return "apt-mark showhold 2>/dev/null; true"

    def process(self, output: list[str]) -> list[str]:
        return parse_showhold(output)


APT_SOURCE_FILES = (
    "/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources"
)


# Prints each file with a line that is not a comment and holds $LOCATION (a fixed string).
_MENTIONS = 'index($0, ENVIRON["LOCATION"]) && $0 !~ /^[[:space:]]*#/ { print FILENAME; nextfile }'


def parse_source_files(output: list[str]) -> dict[str, list[str]]:
    """``grep -l`` output after a ``@@<location>`` line per location -> location: its files."""
    files: dict[str, list[str]] = {}
    location = None
    for line in output:
        if line.startswith("@@"):
            location = line[2:]
            files[location] = []
        elif location is not None and line.strip():
            files[location].append(line.strip())
    return files


class AptSourceFiles(FactBase[dict[str, list[str]]]):
    """
    Returns, per repository location (``host/path`` of its URL, without scheme, credentials or
    trailing slash), the apt source files that mention it outside comments: /etc/apt/sources.list
    and the .list and .sources files of sources.list.d.
    """

    default = dict

    def command(self, locations: list[str]) -> str:
        require_lists(self, locations=locations)
        return "; ".join(
            [
                f"echo {shlex.quote('@@' + location)}; "
                f"LOCATION={shlex.quote(location)} awk {shlex.quote(_MENTIONS)} "
                f"{APT_SOURCE_FILES} 2>/dev/null"
                for location in locations
            ]
            + ["true"]
        )

    def process(self, output: list[str]) -> dict[str, list[str]]:
        return parse_source_files(output)


def parse_madison(output: list[str]) -> dict[str, list[AptOffer]]:
    """
    Parse ``apt-cache madison`` lines, ``name | version | URL suite/component arch Packages``
    (a flat repository has no suite: ``URL  Packages``), into each name's offers. The dpkg
    status line (``/var/lib/dpkg/status``), printed for installed versions no index has, is no
    offer.
    """
    offers: dict[str, list[AptOffer]] = {}
    for line in output:
        fields = [field.strip() for field in line.split("|")]
        if len(fields) != 3 or not fields[2]:
            continue
        name, version, index = fields
        source = index.split()[0]
        if "://" in source:
            offers.setdefault(name, []).append({"version": version, "source": source})
    return offers


class AptOffers(FactBase[dict[str, list[AptOffer]]]):
    """
    Returns, per package of ``packages``, the versions apt's package lists offer and from which
    index; names no list has are left out.
    """

    default = dict

    def command(self, packages: list[str]) -> str:
        require_lists(self, packages=packages)
        if not packages:
            return "true"
        names = " ".join(shlex.quote(package) for package in packages)
        return f"apt-cache madison -- {names} 2>/dev/null; true"

    def process(self, output: list[str]) -> dict[str, list[AptOffer]]:
        return parse_madison(output)
