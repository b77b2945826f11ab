"""How many bytes a refusal's status takes on the wire, as a client's metadata limit counts.

``trailing_metadata()`` hands back ``-bin`` values decoded from base64 and leaves out the
status message, which travels percent-encoded (every byte of a non-ASCII character becomes
three): counting what Python shows would undercount what the client's limit sees.
"""

from __future__ import annotations

import math
import urllib.parse

import grpc

HPACK_ENTRY_OVERHEAD = 32
CLIENT_METADATA_LIMIT = 8 * 1024


def wire_bytes(error: grpc.aio.AioRpcError) -> int:
    """The trailers' size as HPACK counts it (name + value + 32 per entry)."""
    size = 0
    for key, value in error.trailing_metadata() or ():
        raw = len(value) if isinstance(value, bytes) else len(value.encode())
        shown = math.ceil(raw / 3) * 4 if key.endswith("-bin") else raw
        size += len(key) + shown + HPACK_ENTRY_OVERHEAD
    message = urllib.parse.quote(
        (error.details() or "").encode(), safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"
    )
    return size + len("grpc-message") + len(message) + HPACK_ENTRY_OVERHEAD
