"""
Repository keys: the keyring an apt repository is signed-by, checked on the controller.

The keyring installed on hosts holds exactly the pinned primary key with its own user IDs,
subkeys and signatures: apt trusts every key in a signed-by keyring, so one more key in the key
file would let its holder sign the repository. The key must also be neither revoked nor expired,
and a key close to its expiry is reported while the fleet can still be told of the new one.

Pure Python: the packets are read here (RFC 4880), no gpg is needed on the controller. Signatures
are not verified cryptographically; apt does that on the hosts with the installed keyring.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlparse

import requests
from pyinfra.api.exceptions import DeployError

from gpufleet.stack.urls import redact

# Packet tags, RFC 4880 section 4.3.
SIGNATURE_TAG = 2
SECRET_KEY_TAG = 5
PUBLIC_KEY_TAG = 6
SECRET_SUBKEY_TAG = 7
TRUST_TAG = 12
USER_ID_TAG = 13
PUBLIC_SUBKEY_TAG = 14
USER_ATTRIBUTE_TAG = 17
# What a transferable public key is made of (RFC 4880 section 11.1).
TRANSFERABLE_PUBLIC_KEY_TAGS = frozenset(
    {PUBLIC_KEY_TAG, PUBLIC_SUBKEY_TAG, USER_ID_TAG, USER_ATTRIBUTE_TAG, SIGNATURE_TAG, TRUST_TAG}
)

# Signature types, RFC 4880 section 5.2.1.
CERTIFICATION_TYPES = frozenset({0x10, 0x11, 0x12, 0x13})
DIRECT_KEY_TYPE = 0x1F
KEY_REVOCATION_TYPE = 0x20

# Signature subpacket types, RFC 4880 section 5.2.3.1.
CREATION_TIME_SUBPACKET = 2
KEY_EXPIRATION_SUBPACKET = 9
ISSUER_SUBPACKET = 16
REVOCATION_REASON_SUBPACKET = 29
ISSUER_FINGERPRINT_SUBPACKET = 33  # RFC 4880bis section 5.2.3.28, written by gpg 2.2

# RFC 4880 section 5.2.3.23.
REVOCATION_REASONS = {
    0: "no reason given",
    1: "the key is superseded",
    2: "the key material has been compromised",
    3: "the key is retired",
}

EXPIRY_WARNING_PERIOD = timedelta(days=90)
V4_FINGERPRINT = re.compile(r"[0-9A-F]{40}")

logger = logging.getLogger("pyinfra")


class RepositoryKeyError(DeployError):
    """The repository key could not be fetched or is not the pinned key, valid today."""


@dataclass(frozen=True)
class Packet:
    """One OpenPGP packet: its tag, its body, and the packet as read (header and body)."""

    tag: int
    body: bytes
    raw: bytes


@dataclass(frozen=True)
class _Signature:
    """What a v4 signature packet says about the key it belongs to (RFC 4880 section 5.2.3)."""

    type: int
    issuer_key_id: bytes | None
    created: int
    key_lifetime: int | None
    revocation_reason: bytes | None


def dearmor(armored: bytes) -> bytes:
    """
    The binary OpenPGP packets of ASCII-armored data (RFC 4880 section 6.2), every armored block
    in turn: what `gpg --dearmor` writes for each block.
    """
    lines = iter(armored.decode("ascii", errors="replace").splitlines())
    blocks = []
    for line in lines:
        if not line.startswith("-----BEGIN PGP"):
            continue
        # Armor headers ("Comment: ...") end at the first blank line.
        for header in lines:
            if not header.strip():
                break
        body = []
        for body_line in lines:
            # "=XXXX" is the CRC-24 checksum line; the END marker closes the block.
            if body_line.startswith(("=", "-----END PGP")):
                break
            body.append(body_line.strip())
        try:
            blocks.append(base64.b64decode("".join(body), validate=True))
        except binascii.Error as error:
            raise ValueError(f"armored key body is not base64: {error}") from error
    if not blocks:
        raise ValueError("no ASCII-armored OpenPGP block found")
    return b"".join(blocks)


def _octets(data: bytes, start: int, count: int) -> bytes:
    if start + count > len(data):
        raise ValueError(f"OpenPGP data ends inside a packet (at byte {len(data)})")
    return data[start : start + count]


def read_packets(data: bytes) -> list[Packet]:
    """Every packet of binary OpenPGP data, in order (RFC 4880 section 4.2, both formats)."""
    packets = []
    offset = 0
    while offset < len(data):
        header = data[offset]
        if not header & 0x80:
            raise ValueError(f"not an OpenPGP packet (at byte {offset})")
        if header & 0x40:  # new format, RFC 4880 section 4.2.2
            tag = header & 0x3F
            first = _octets(data, offset + 1, 1)[0]
            if first < 192:
                length, start = first, offset + 2
            elif first < 224:
                second = _octets(data, offset + 2, 1)[0]
                length, start = ((first - 192) << 8) + second + 192, offset + 3
            elif first == 255:
                length, start = int.from_bytes(_octets(data, offset + 2, 4), "big"), offset + 6
            else:
                # Partial lengths are for data packets only (RFC 4880 section 4.2.2.4).
                raise ValueError(f"packet tag {tag} has a partial body length")
        else:  # old format, RFC 4880 section 4.2.1
            tag = (header >> 2) & 0x0F
            size = {0: 1, 1: 2, 2: 4}.get(header & 0x03)
            if size is None:
                raise ValueError(f"packet tag {tag} has an indeterminate length")
            length = int.from_bytes(_octets(data, offset + 1, size), "big")
            start = offset + 1 + size
        body = _octets(data, start, length)
        packets.append(Packet(tag=tag, body=body, raw=data[offset : start + length]))
        offset = start + length
    return packets


def _v4_fingerprint(public_key_body: bytes) -> str:
    """A v4 key's fingerprint: SHA-1 of 0x99, the 2-octet length and the key packet body."""
    version = public_key_body[0] if public_key_body else None
    if version != 4:
        raise ValueError(f"public key version {version} is not supported (only v4)")
    prefix = b"\x99" + len(public_key_body).to_bytes(2, "big")
    return hashlib.sha1(prefix + public_key_body, usedforsecurity=False).hexdigest().upper()


def key_fingerprint(keyring: bytes) -> str:
    """
    The v4 fingerprint of the primary key in a binary keyring, what apt and gpg show (RFC 4880
    section 12.2). The keyring's first packet must be that key.
    """
    packets = read_packets(keyring)
    if not packets or packets[0].tag != PUBLIC_KEY_TAG:
        tag = packets[0].tag if packets else None
        raise ValueError(f"first OpenPGP packet is tag {tag}, not a public key")
    return _v4_fingerprint(packets[0].body)


def _subpackets(area: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, data) of each subpacket of a signature's subpacket area (RFC 4880 5.2.3.1)."""
    offset = 0
    while offset < len(area):
        first = area[offset]
        if first < 192:
            length, start = first, offset + 1
        elif first < 255:
            second = _octets(area, offset + 1, 1)[0]
            length, start = ((first - 192) << 8) + second + 192, offset + 2
        else:
            length, start = int.from_bytes(_octets(area, offset + 1, 4), "big"), offset + 5
        content = _octets(area, start, length)
        if not content:
            raise ValueError("signature subpacket without a type")
        # Bit 7 of the type is the "critical" flag.
        yield content[0] & 0x7F, content[1:]
        offset = start + length


def _signature(body: bytes) -> _Signature | None:
    """The v4 signature in a signature packet body; None for other versions (RFC 4880 5.2.3)."""
    if body[:1] != b"\x04":
        return None
    hashed_length = int.from_bytes(_octets(body, 4, 2), "big")
    hashed = _octets(body, 6, hashed_length)
    unhashed_length = int.from_bytes(_octets(body, 6 + hashed_length, 2), "big")
    unhashed = _octets(body, 8 + hashed_length, unhashed_length)
    # Times and lifetimes count only when signed; the issuer may be in either area.
    signed = dict(_subpackets(hashed))
    either_area = {**dict(_subpackets(unhashed)), **signed}
    issuer_key_id = either_area.get(ISSUER_SUBPACKET)
    if issuer_key_id is None and ISSUER_FINGERPRINT_SUBPACKET in either_area:
        # A version octet and the fingerprint; a v4 key ID is the fingerprint's last 8 octets.
        issuer_key_id = either_area[ISSUER_FINGERPRINT_SUBPACKET][-8:]
    lifetime = signed.get(KEY_EXPIRATION_SUBPACKET)
    return _Signature(
        type=body[1],
        issuer_key_id=issuer_key_id,
        created=int.from_bytes(signed.get(CREATION_TIME_SUBPACKET, b""), "big"),
        key_lifetime=None if lifetime is None else int.from_bytes(lifetime, "big"),
        revocation_reason=signed.get(REVOCATION_REASON_SUBPACKET),
    )


def _revocation_reason(subpacket: bytes | None) -> str:
    """A reason for revocation subpacket in words: its code, and the issuer's text if any."""
    if not subpacket:
        return REVOCATION_REASONS[0]
    code = REVOCATION_REASONS.get(subpacket[0], f"reason code {subpacket[0]}")
    text = subpacket[1:].decode("utf-8", errors="replace")
    return f"{code}: {text}" if text else code


def _key_state(packets: list[Packet]) -> tuple[str | None, datetime | None]:
    """
    (revocation reason, expiry) of the transferable public key `packets` (RFC 4880 11.1), from
    its self-signatures: a key revocation (type 0x20) revokes it; the key expiration time of the
    newest certification of a user ID (0x10-0x13) or direct-key signature (0x1F) ends it.
    """
    key = packets[0].body
    key_id = bytes.fromhex(_v4_fingerprint(key))[-8:]
    revocation = None
    expiry_signatures = []
    # The packet that the signatures which follow are over: the key, a user ID, a subkey...
    signed_packet_tag = PUBLIC_KEY_TAG
    for packet in packets[1:]:
        if packet.tag != SIGNATURE_TAG:
            if packet.tag != TRUST_TAG:
                signed_packet_tag = packet.tag
            continue
        signature = _signature(packet.body)
        if signature is None or signature.issuer_key_id != key_id:
            continue
        if signature.type == KEY_REVOCATION_TYPE:
            revocation = _revocation_reason(signature.revocation_reason)
        elif signature.type == DIRECT_KEY_TYPE or (
            signature.type in CERTIFICATION_TYPES and signed_packet_tag == USER_ID_TAG
        ):
            expiry_signatures.append(signature)
    # Of equally new ones, the later in the file.
    newest = max(reversed(expiry_signatures), key=lambda signature: signature.created, default=None)
    if newest is None or not newest.key_lifetime:  # a lifetime of 0 means no expiry
        return revocation, None
    created = int.from_bytes(key[1:5], "big")
    return revocation, datetime.fromtimestamp(created + newest.key_lifetime, timezone.utc)


# Held while fetching: pyinfra loads hosts concurrently (gevent greenlets; its CLI patches
# threading first, so this is a gevent lock there), and without it every host that reaches
# _fetch before the first answer arrives fetches the key again (32 hosts: 23 GETs, measured).
_fetch_lock = threading.Lock()


def _fetch(location: str) -> bytes:
    """The key file's bytes, fetched once per run and location."""
    with _fetch_lock:
        return _fetch_once(location)


@functools.cache
def _fetch_once(location: str) -> bytes:
    parsed = urlparse(location)
    if parsed.scheme in ("http", "https"):
        response = requests.get(location, timeout=30)
        response.raise_for_status()
        return response.content
    return Path(parsed.path if parsed.scheme == "file" else location).read_bytes()


def fetch_failure(location: str, error: OSError | requests.RequestException) -> str:
    """Why fetching failed, without the URL's credentials (requests' messages quote URLs)."""
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code} {error.response.reason}"
    if isinstance(error, requests.RequestException) and redact(location) != location:
        return f"{type(error).__name__} (details withheld: they show the URL's credentials)"
    return str(error)


@functools.cache
def _warn_once(message: str) -> None:
    """Log a warning once per run, not once per host."""
    logger.warning(message)


def fetch_keyring(
    data_key: str, location: str, fingerprint: str, now: datetime | None = None
) -> bytes:
    """
    The binary keyring to install for the key file at `location` (URL or controller path,
    armored or binary), `data_key` being the inventory key that names it.

    Refused (RepositoryKeyError) unless the file holds exactly one transferable public key
    (RFC 4880 section 11.1) whose v4 fingerprint is the pinned 40-digit `fingerprint`, neither
    revoked nor expired at `now` (an aware datetime; default: the current time). A key that
    expires within 90 days is accepted with a warning logged. The keyring returned is the key's
    packets as read, without trust packets (they are local to a keyring).
    """
    shown = f"{data_key} = {redact(location)!r}"
    try:
        raw = _fetch(location)
    except (OSError, requests.RequestException) as error:
        # Not chained: the error's message and traceback may hold the URL's credentials.
        raise RepositoryKeyError(
            f"{shown}: cannot fetch the key: {fetch_failure(location, error)}"
        ) from None
    try:
        packets = read_packets(dearmor(raw) if raw.lstrip().startswith(b"-----BEGIN PGP") else raw)
        primary_keys = [
            _v4_fingerprint(packet.body) for packet in packets if packet.tag == PUBLIC_KEY_TAG
        ]
    except ValueError as error:
        raise RepositoryKeyError(f"{shown} is not an OpenPGP public key: {error}") from error
    found = f"key(s) found: {', '.join(primary_keys) or 'none'}"
    wanted = fingerprint.replace(" ", "").upper()
    tags = {packet.tag for packet in packets}
    if tags & {SECRET_KEY_TAG, SECRET_SUBKEY_TAG}:
        raise RepositoryKeyError(
            f"{shown} holds a SECRET key ({found}); a secret key is never installed on hosts: "
            "publish the public key only (gpg --armor --export)"
        )
    if tags - TRANSFERABLE_PUBLIC_KEY_TAGS:
        other = ", ".join(str(tag) for tag in sorted(tags - TRANSFERABLE_PUBLIC_KEY_TAGS))
        raise RepositoryKeyError(
            f"{shown} holds OpenPGP packets that are not part of a public key (tag {other}; "
            f"{found}); a repository key file holds the repository's public key only"
        )
    if not V4_FINGERPRINT.fullmatch(wanted):
        raise RepositoryKeyError(
            f"{shown}: the pinned fingerprint {fingerprint!r} is not 40 hex digits ({found}); "
            "pin the key's full fingerprint (a short key ID is easily forged) in the matching "
            "*_key_fingerprint of your inventory"
        )
    if len(primary_keys) != 1 or packets[0].tag != PUBLIC_KEY_TAG:
        raise RepositoryKeyError(
            f"{shown} must hold exactly the pinned key {wanted} ({found}); apt would trust every "
            "key of the file as the repository's"
        )
    if primary_keys[0] != wanted:
        raise RepositoryKeyError(
            f"{shown} holds key {primary_keys[0]}, not the pinned {wanted}; if the repository's "
            "key really changed, set the matching *_key_fingerprint in your inventory"
        )
    revocation, expiry = _key_state(packets)
    if revocation is not None:
        raise RepositoryKeyError(
            f"{shown}: key {wanted} is revoked ({revocation}); the repository's key has likely "
            f"been rotated: set the new key's {data_key} and *_key_fingerprint in your inventory"
        )
    now = datetime.now(timezone.utc) if now is None else now
    if expiry is not None and expiry <= now:
        raise RepositoryKeyError(
            f"{shown}: key {wanted} expired on {expiry:%Y-%m-%d %H:%M} UTC; the repository's key "
            f"has likely been rotated: set the new key's {data_key} and *_key_fingerprint in "
            "your inventory"
        )
    if expiry is not None and expiry - now < EXPIRY_WARNING_PERIOD:
        _warn_once(
            f"{shown}: key {wanted} expires on {expiry:%Y-%m-%d %H:%M} UTC, in "
            f"{(expiry - now).days} day(s); apt refuses the repository after that. When the "
            f"repository publishes a new key, set its {data_key} and *_key_fingerprint in your "
            "inventory (an extended expiry of this key is installed by the next run)"
        )
    return b"".join(packet.raw for packet in packets if packet.tag != TRUST_TAG)
