"""The Kubernetes streaming channel protocol that ``pods/exec`` speaks over a websocket.

Pure functions only, so the wire format can be table-tested without a server; ``exec`` does
the I/O around them.

**Framing.** Every binary websocket message starts with one byte naming its channel; the rest
is the payload. Channel 0 carries the command's stdin (client to server), 1 its stdout, 2 its
stderr, 3 the error channel (one ``metav1.Status`` JSON when the command ends) and 4 terminal
resizes (client to server, JSON ``{"Width": cols, "Height": rows}``).

**Versions.** The client offers subprotocols in order of preference and the server picks one.
``v5.channel.k8s.io`` (Kubernetes 1.30 and later) adds one thing to ``v4.channel.k8s.io``: a
frame of channel 255 followed by a channel number closes that stream, which is how a client
says "end of stdin" without closing the whole connection. On v4 a client cannot end stdin at
all; older versions report the exit status as text, not as a ``Status``, and are not offered.

**Exit status.** ``status: Success`` means exit code 0. A non-zero exit is ``status: Failure``
with reason ``NonZeroExitCode`` and the code as the message of the cause whose reason is
``ExitCode``. A ``Failure`` without that cause means the command never ran (an executable
that does not exist, a container that stopped): there is no exit code to report.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

V5_PROTOCOL = "v5.channel.k8s.io"
V4_PROTOCOL = "v4.channel.k8s.io"
PROTOCOLS = (V5_PROTOCOL, V4_PROTOCOL)
"""What shellgate offers, most preferred first."""

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
CLOSE_STREAM = 255
"""v5 only: ``[255, channel]`` closes ``channel`` (the server sees EOF on it)."""

WORKDIR_TRAMPOLINE = 'cd -- "$1" || exit 126; shift; exec "$@"'
"""Kubernetes exec has no working-directory parameter. This script changes directory and then
``exec``s the caller's argv unchanged: nothing of the command is parsed by the shell."""


class ExecStatusError(Exception):
    """The error channel reported a failure that is not an exit code."""


@dataclass(frozen=True, slots=True)
class Frame:
    channel: int
    payload: bytes


def encode(channel: int, payload: bytes = b"") -> bytes:
    """One message on ``channel``."""
    return bytes((channel,)) + payload


def encode_chunks(channel: int, payload: bytes, limit: int) -> Iterator[bytes]:
    """``payload`` on ``channel`` as messages of at most ``limit`` payload bytes each."""
    for start in range(0, len(payload), limit):
        yield encode(channel, payload[start : start + limit])


def close_stream(channel: int) -> bytes:
    """The v5 signal that ``channel`` has ended."""
    return bytes((CLOSE_STREAM, channel))


def resize(cols: int, rows: int) -> bytes:
    """A terminal size change, as the resize channel expects it."""
    return encode(RESIZE, json.dumps({"Width": cols, "Height": rows}).encode())


def decode(message: bytes) -> Frame | None:
    """A received message as a frame; None for an empty message (no channel byte)."""
    if not message:
        return None
    return Frame(channel=message[0], payload=bytes(message[1:]))


def exit_code(status: bytes) -> int:
    """The exit code a ``Status`` from the error channel reports.

    Raises ``ExecStatusError`` with the server's message when the command failed without an
    exit code (it could not start), or when the payload is not a ``Status`` at all.
    """
    try:
        decoded = json.loads(status)
    except ValueError:
        raise ExecStatusError(_shortened(status.decode(errors="replace"))) from None
    if not isinstance(decoded, dict):
        raise ExecStatusError(_shortened(str(decoded)))
    if decoded.get("status") == "Success":
        return 0
    for cause in (decoded.get("details") or {}).get("causes") or ():
        if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
            try:
                return int(str(cause.get("message")))
            except ValueError:
                break
    message = decoded.get("message") or decoded.get("reason") or "the command failed"
    raise ExecStatusError(_shortened(str(message)))


def command_line(
    command: Sequence[str], *, workdir: str = "", environment: Mapping[str, str] | None = None
) -> list[str]:
    """The argv to send to ``pods/exec`` for ``command`` in ``workdir`` with ``environment``.

    Exec runs in the container's working directory with the container's environment and has
    no parameters to change either. Extra variables go through ``env`` (exec'd, no shell); a
    working directory through ``sh`` running ``WORKDIR_TRAMPOLINE``, which only changes
    directory and execs the rest. Without either, the command is sent as it is, so an image
    without ``sh`` or ``env`` still runs plain commands.
    """
    argv = list(command)
    if environment:
        argv = ["env", *(f"{key}={environment[key]}" for key in sorted(environment)), *argv]
    if workdir:
        argv = ["sh", "-c", WORKDIR_TRAMPOLINE, "sh", workdir, *argv]
    return argv


def exec_query(command: Sequence[str], *, container: str, tty: bool) -> list[tuple[str, str]]:
    """The query parameters of a ``pods/exec`` request (one ``command`` per argument).

    stdin is always open, so the caller may stream to it. A terminal merges stderr into
    stdout, so with ``tty`` the API server refuses a separate stderr stream.
    """
    params = [("command", argument) for argument in command]
    params += [
        ("container", container),
        ("stdin", "true"),
        ("stdout", "true"),
        ("stderr", "false" if tty else "true"),
        ("tty", "true" if tty else "false"),
    ]
    return params


def _shortened(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
