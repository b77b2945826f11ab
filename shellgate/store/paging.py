"""Opaque page tokens for key-paged lists.

A token encodes the (created_at_ms, id) key of the last row of a page; the next page starts
strictly after it. Unlike OFFSET, a key stays correct while rows are inserted or deleted.
"""

from __future__ import annotations

import base64
import json

from shellgate.store.errors import InvalidPageToken
from shellgate.store.records import ObjectRecord, Page

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


def encode_page_token(created_at_ms: int, object_id: str) -> str:
    raw = json.dumps([created_at_ms, object_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[int, str]:
    try:
        padded = token + "=" * (-len(token) % 4)
        created_at_ms, object_id = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, TypeError) as exc:
        raise InvalidPageToken(f"invalid page token {token!r}") from exc
    if (
        not isinstance(created_at_ms, int)
        or isinstance(created_at_ms, bool)
        or not 0 <= created_at_ms < 2**63
        or not isinstance(object_id, str)
    ):
        raise InvalidPageToken(f"invalid page token {token!r}")
    return created_at_ms, object_id


def clamp_page_size(limit: int) -> int:
    """0 means the default size; anything above the maximum is cut to it."""
    if limit < 0:
        raise ValueError(f"page size must not be negative, got {limit}")
    return DEFAULT_PAGE_SIZE if limit == 0 else min(limit, MAX_PAGE_SIZE)


def page_of(records: list[ObjectRecord], size: int) -> Page:
    """A page from ``size + 1`` fetched rows: the extra row only says another page exists."""
    shown = records[:size]
    token = ""
    if len(records) > size:
        token = encode_page_token(shown[-1].created_at_ms, shown[-1].id)
    return Page(shown, token)
