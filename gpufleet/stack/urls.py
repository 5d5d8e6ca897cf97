"""
Repository and key URLs from inventory data: checked before they reach a source line or a
command, and never shown with their credentials.

A URL goes into `deb [signed-by=...] URL /` as one word: whitespace or a control character would
let inventory data write other apt source lines (`[trusted=yes]` ones) into the file.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

REPOSITORY_SCHEMES = ("http", "https", "file")
# A DNS name: labels of letters, digits and inner hyphens.
_HOSTNAME = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?)*\.?"
)
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f]")
REDACTED = "***"


@dataclass(frozen=True)
class Credentials:
    """A URL's `user:password@`, as apt's auth.conf takes them (`machine scheme://host/path`)."""

    machine: str
    login: str
    password: str


def _well_formed_host(hostname: str) -> bool:
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return bool(_HOSTNAME.fullmatch(hostname))
    return True


def redact(url: str) -> str:
    """The URL with any `user:password@` and ?query (a signed URL's token) replaced, for
    messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        # Unparsable (an unclosed [IPv6] bracket): where its credentials end is unknown.
        return REDACTED if "@" in url or "?" in url else url
    if not parts.query and "@" not in parts.netloc:
        return url  # as written: urlsplit drops the control characters a message must show
    if parts.query:
        parts = parts._replace(query=REDACTED)
    if "@" in parts.netloc:
        parts = parts._replace(netloc=f"{REDACTED}@{parts.netloc.rpartition('@')[2]}")
    return urlunsplit(parts)


def url_problem(
    key: str, url: str, schemes: tuple[str, ...] = REPOSITORY_SCHEMES, query: bool = False
) -> str | None:
    """Why ``url`` (the value of data key ``key``) cannot be used, or None when it can;
    ``query``: a ?query is part of it (a download's signed URL), not of a repository's."""
    shown = redact(url)
    if _UNSAFE.search(url):
        return (
            f"{key} = {shown!r} contains whitespace or a control character; a URL is one word, "
            "with spaces written as %20"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return f"{key} = {shown!r} is not a well-formed URL ({error})"
    if parts.scheme not in schemes:
        return (
            f"{key} = {shown!r} has scheme {parts.scheme or '(none)'!r}; use a "
            f"{' or '.join(f'{s}://' for s in schemes)} URL"
        )
    if any(_UNSAFE.search(unquote(part or "")) for part in (parts.username, parts.password)):
        return f"{key} = {shown!r}: its user name and password cannot hold whitespace"
    if parts.fragment or (parts.query and not query):
        return f"{key} = {shown!r}: a repository URL has no ?query or #fragment"
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            return f"{key} = {shown!r}: a file URL names a folder on the host, file:///path"
        return None
    if not _well_formed_host(parts.hostname or "") or port == 0:
        return (
            f"{key} = {shown!r} has no well-formed host name; use e.g. "
            "'https://mirror.example.com/cuda/'"
        )
    return None


def without_credentials(url: str) -> str:
    """The URL with `user:password@` removed: what a source line holds."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


_URL_IN_TEXT = re.compile(r"[a-z][a-z0-9+.-]*://[^\s'\"]+", re.IGNORECASE)


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (a tool's message quoting a URL)."""
    return _URL_IN_TEXT.sub(lambda match: redact(match.group()), text)


def location(url: str) -> str:
    """``host[:port]/path`` of a URL, without scheme, credentials or trailing slash."""
    parts = urlsplit(url)
    return (parts.netloc.rpartition("@")[2] + parts.path).rstrip("/")


def credentials(url: str) -> Credentials | None:
    """The URL's `user:password@` for apt's auth.conf.d, or None without any."""
    parts = urlsplit(url)
    if parts.username is None:
        return None
    # Without a scheme, apt matches a machine for https only (apt_auth.conf(5), apt 2.x).
    return Credentials(
        machine=f"{parts.scheme}://{location(url)}",
        login=unquote(parts.username),
        password=unquote(parts.password or ""),
    )
