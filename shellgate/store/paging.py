"""Page tokens: opaque to clients, versioned, bounded, and checked in one place.

Every list RPC pages with a token made here. A token is ``base64url("1|<kind>|<position>")``:
``1`` is the format version (a later format can still read or refuse an older one by
number), ``kind`` names what the position means, so a token from one list is refused by
another, and the position is plain ASCII digits (and for keys an id). A token is refused
(``InvalidPageToken``, INVALID_ARGUMENT) unless it is at most ``MAX_TOKEN_LENGTH``
characters, decodes, has this version and kind, and holds numbers in range; nothing a client
sends reaches a JSON parser, ``int()`` of unbounded digits, or the database unchecked.

Kinds:

* ``key``: the (created_at_ms, id) key of the last row of a page; the next page starts
  strictly after it. Unlike OFFSET, a key stays correct while rows come and go.
* ``version``: the last policy-revision version served; the next page is below it.
* ``offset``: a position in a short list computed per request (a sandbox's providers).
"""

from __future__ import annotations

import base64
import binascii

from shellgate.store.errors import InvalidPageToken
from shellgate.store.records import ObjectRecord, Page

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_BYTES = 4 * 1024 * 1024
"""Stored payload bytes in one page: a page ends early (with a token) past this, so a list
costs bounded memory and a bounded response whatever its page size and its rows' sizes."""
MAX_TOKEN_LENGTH = 512
TOKEN_FORMAT = "1"
MAX_POSITION = 2**63 - 1
_DIGITS = frozenset("0123456789")


def encode_page_token(created_at_ms: int, object_id: str) -> str:
    """The token of a key-paged list, after the row (``created_at_ms``, ``object_id``)."""
    return _encode("key", f"{created_at_ms}:{object_id}")


def decode_page_token(token: str) -> tuple[int, str]:
    created, _, object_id = _decode(token, "key").partition(":")
    if not object_id:
        raise _invalid()
    return _number(created), object_id


def encode_version_token(version: int) -> str:
    return _encode("version", str(version))


def decode_version_token(token: str) -> int | None:
    """The version a page of revisions ends at; None for an empty token (the first page)."""
    return _number(_decode(token, "version")) if token else None


def encode_offset_token(offset: int) -> str:
    return _encode("offset", str(offset))


def decode_offset_token(token: str) -> int:
    """The offset a page starts at; 0 for an empty token (the first page)."""
    return _number(_decode(token, "offset")) if token else 0


def clamp_page_size(limit: int) -> int:
    """0 means the default size; anything above the maximum is cut to it."""
    if limit < 0:
        raise ValueError(f"page size must not be negative, got {limit}")
    return DEFAULT_PAGE_SIZE if limit == 0 else min(limit, MAX_PAGE_SIZE)


def page_of(records: list[ObjectRecord], size: int, max_bytes: int = MAX_PAGE_BYTES) -> Page:
    """A page from ``size + 1`` fetched rows: the extra row only says another page exists.

    The page also ends before the row that would take its payloads past ``max_bytes``
    (always keeping one row, so a list moves on whatever the sizes).
    """
    shown: list[ObjectRecord] = []
    used = 0
    for record in records[:size]:
        used += len(record.payload)
        if shown and used > max_bytes:
            break
        shown.append(record)
    token = ""
    if len(records) > len(shown):
        token = encode_page_token(shown[-1].created_at_ms, shown[-1].id)
    return Page(shown, token)


def _encode(kind: str, position: str) -> str:
    raw = f"{TOKEN_FORMAT}|{kind}|{position}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str, kind: str) -> str:
    """The position of a token of ``kind``; refuses anything else without echoing it."""
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        raise _invalid()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise _invalid() from None
    version, _, rest = raw.partition("|")
    found_kind, _, position = rest.partition("|")
    if version != TOKEN_FORMAT or found_kind != kind:
        raise _invalid()
    return position


def _number(text: str) -> int:
    """ASCII digits only (``str.isdecimal`` also takes other scripts' digits), in range."""
    if not text or len(text) > 19 or not _DIGITS.issuperset(text):
        raise _invalid()
    value = int(text)
    if value > MAX_POSITION:
        raise _invalid()
    return value


def _invalid() -> InvalidPageToken:
    return InvalidPageToken("invalid page token: pass back a next_page_token unchanged")
