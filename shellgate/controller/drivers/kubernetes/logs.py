"""A sandbox's main-process output, read from its pod's ``pods/log`` subresource.

The kubelet keeps what the container wrote to stdout and stderr, interleaved, one line per
entry. shellgate asks for ``timestamps=true`` so that every line starts with the time the
runtime received it (RFC 3339 with nanoseconds), which becomes the ``LogLine`` timestamp.
The API server's own parameters do the bounding: ``tailLines`` (at most ``MAX_LINES``),
``sinceTime`` (whole seconds on the wire, so lines from earlier in that second are dropped
here) and ``limitBytes``. Lines arrive oldest first and stay that way.

Container output has no level: every line is ``INFO`` from source ``sandbox``, the source
name the gateway's own events do not use, so a query for other sources or for warnings and
errors only gets none of it.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from kubernetes_asyncio import client as k8s

from shellgate.controller.drivers.exec import LogLine, LogQuery

MAX_LINES = 1000
"""The most lines one read returns (also when the query asks for none or more)."""
MAX_BYTES = 4 * 1024 * 1024
"""The most bytes of log one read transfers."""
MAX_LINE_CHARS = 16 * 1024
"""A longer line is cut here (a runtime splits very long lines itself, usually at 16 KiB)."""
SOURCE = "sandbox"
LEVEL = "INFO"
LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")
REQUEST_TIMEOUT = 30


def wanted(query: LogQuery) -> bool:
    """Whether the query can match container output at all (its source and level)."""
    if query.sources and SOURCE not in query.sources:
        return False
    minimum = query.min_level.strip().upper()
    minimum = "WARN" if minimum == "WARNING" else minimum
    return not minimum or minimum not in LEVELS or LEVELS.index(minimum) <= LEVELS.index(LEVEL)


def log_params(query: LogQuery, *, container: str) -> dict[str, str]:
    """The ``pods/log`` query parameters for ``query``."""
    lines = min(query.lines, MAX_LINES) if query.lines > 0 else MAX_LINES
    params = {
        "container": container,
        "timestamps": "true",
        "tailLines": str(lines),
        "limitBytes": str(MAX_BYTES),
    }
    if query.since_ms > 0:
        since = datetime.datetime.fromtimestamp(query.since_ms // 1000, tz=datetime.UTC)
        params["sinceTime"] = since.strftime("%Y-%m-%dT%H:%M:%SZ")
    return params


def parse_lines(text: str, *, since_ms: int = 0, limit: int = MAX_LINES) -> list[LogLine]:
    """Timestamped log text as ``LogLine``s, oldest first, the newest ``limit`` of them.

    A line without a readable timestamp (the last one when ``limitBytes`` cut it, or a
    server that ignored ``timestamps``) keeps the time of the line before it.
    """
    parsed: list[LogLine] = []
    last_ms = 0
    for raw in _lines(text):
        stamp, _, message = raw.partition(" ")
        at = _timestamp_ms(stamp)
        if at is None:
            at, message = last_ms, raw
        last_ms = at
        if since_ms and at < since_ms:
            continue
        parsed.append(
            LogLine(timestamp_ms=at, level=LEVEL, source=SOURCE, message=message[:MAX_LINE_CHARS])
        )
    return parsed[-limit:] if limit > 0 else parsed


async def read_pod_logs(
    api_client: k8s.ApiClient, *, namespace: str, pod: str, container: str, query: LogQuery
) -> list[LogLine]:
    """The pod's log as ``LogLine``s (``ApiError`` handling is the caller's, as for any call).

    Goes through the library's generic ``call_api``: its generated ``read_namespaced_pod_log``
    has no ``sinceTime`` parameter.
    """
    if not wanted(query):
        return []
    path = "/api/v1/namespaces/{namespace}/pods/{name}/log"
    text = await api_client.call_api(
        path, "GET",
        path_params={"namespace": namespace, "name": pod},
        query_params=list(log_params(query, container=container).items()),
        header_params={"Accept": "text/plain"},
        response_types_map={200: "str"},
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
        _request_timeout=REQUEST_TIMEOUT,
    )  # fmt: skip
    limit = query.lines if 0 < query.lines < MAX_LINES else MAX_LINES
    return parse_lines(str(text or ""), since_ms=query.since_ms, limit=limit)


def _lines(text: str) -> Iterable[str]:
    return (line.rstrip("\r") for line in text.split("\n") if line.strip("\r"))


def _timestamp_ms(stamp: str) -> int | None:
    """RFC 3339 (nanoseconds allowed) to epoch milliseconds; None when it is not one."""
    if not stamp or not stamp[:4].isdigit():
        return None
    head, dot, rest = stamp.partition(".")
    zone = ""
    fraction = ""
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        fraction, zone = rest[:digits], rest[digits:]
    else:
        head, zone = head[:19], head[19:]
    try:
        moment = datetime.datetime.fromisoformat(head + (zone.replace("Z", "+00:00") or "+00:00"))
    except ValueError:
        return None
    millis = int((fraction + "000")[:3]) if fraction else 0
    return int(moment.timestamp()) * 1000 + millis
