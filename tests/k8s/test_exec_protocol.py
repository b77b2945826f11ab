"""The channel protocol and the log format as pure functions (no server)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shellgate.controller.drivers.exec import LogQuery
from shellgate.controller.drivers.kubernetes import channel, logs

# ---- frames -------------------------------------------------------------------------------


def test_frames_carry_their_channel_in_the_first_byte() -> None:
    assert channel.encode(channel.STDIN, b"abc") == b"\x00abc"
    assert channel.decode(b"\x02oops") == channel.Frame(channel=2, payload=b"oops")
    assert channel.decode(b"\x01") == channel.Frame(channel=1, payload=b"")
    assert channel.decode(b"") is None
    assert channel.close_stream(channel.STDIN) == b"\xff\x00"


def test_stdin_is_cut_into_bounded_frames() -> None:
    frames = list(channel.encode_chunks(channel.STDIN, b"x" * 10, 4))
    assert frames == [b"\x00xxxx", b"\x00xxxx", b"\x00xx"]
    assert list(channel.encode_chunks(channel.STDIN, b"", 4)) == []


def test_resize_is_json_width_and_height() -> None:
    frame = channel.decode(channel.resize(120, 40))
    assert frame is not None and frame.channel == channel.RESIZE
    assert json.loads(frame.payload) == {"Width": 120, "Height": 40}


# ---- exit status --------------------------------------------------------------------------


def _failure(causes: list[dict[str, Any]], message: str = "boom") -> bytes:
    status = {
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "NonZeroExitCode",
        "details": {"causes": causes},
    }
    return json.dumps(status).encode()


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (b'{"metadata":{},"status":"Success"}', 0),
        (_failure([{"reason": "ExitCode", "message": "3"}]), 3),
        (_failure([{"reason": "ExitCode", "message": "137"}]), 137),
        # the exit code is the cause named ExitCode, not simply the first cause
        (
            _failure([{"reason": "Other", "message": "7"}, {"reason": "ExitCode", "message": "2"}]),
            2,
        ),
    ],
)
def test_exit_codes(status: bytes, code: int) -> None:
    assert channel.exit_code(status) == code


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (_failure([], 'exec: "nope": executable file not found'), "executable file not found"),
        (_failure([{"reason": "ExitCode", "message": "x"}], "odd"), "odd"),
        (b"not json", "not json"),
        (b"[1]", r"\[1\]"),
    ],
)
def test_failures_without_an_exit_code(status: bytes, message: str) -> None:
    with pytest.raises(channel.ExecStatusError, match=message):
        channel.exit_code(status)


# ---- the command line ---------------------------------------------------------------------


def test_a_plain_command_is_sent_unchanged() -> None:
    assert channel.command_line(("ls", "-l", "a b")) == ["ls", "-l", "a b"]


def test_environment_goes_through_env_sorted() -> None:
    argv = channel.command_line(("cmd",), environment={"B": "2", "A": "x y"})
    assert argv == ["env", "A=x y", "B=2", "cmd"]


def test_the_workdir_trampoline_runs_the_argv_without_parsing_it(tmp_path: Path) -> None:
    """Run the real argv through a local sh: nothing of the command is shell-interpreted."""
    target = tmp_path / "a dir; $(echo no)"
    target.mkdir()
    argv = channel.command_line(
        ("sh", "-c", 'pwd; printf "%s|" "$@"; printf "%s" "$V"', "-", "$HOME", "*"),
        workdir=str(target),
        environment={"V": "$(echo not run)"},
    )
    done = subprocess.run(argv, capture_output=True, check=True, cwd=tmp_path)
    assert done.stdout.decode() == f"{target}\n$HOME|*|$(echo not run)"


def test_exec_query_repeats_command_and_drops_stderr_with_a_terminal() -> None:
    params = channel.exec_query(["a", "b"], container="sandbox", tty=True)
    assert params[:2] == [("command", "a"), ("command", "b")]
    assert dict(params[2:]) == {
        "container": "sandbox",
        "stdin": "true",
        "stdout": "true",
        "stderr": "false",
        "tty": "true",
    }
    assert dict(channel.exec_query(["a"], container="c", tty=False))["stderr"] == "true"


# ---- logs ---------------------------------------------------------------------------------


def test_log_params_bound_the_lines_and_floor_the_time_to_a_second() -> None:
    params = logs.log_params(LogQuery(lines=5, since_ms=1_795_000_000_999), container="sandbox")
    assert params == {
        "container": "sandbox",
        "timestamps": "true",
        "tailLines": "5",
        "limitBytes": str(logs.MAX_BYTES),
        "sinceTime": "2026-11-18T11:06:40Z",
    }
    assert logs.log_params(LogQuery(), container="c")["tailLines"] == str(logs.MAX_LINES)
    assert logs.log_params(LogQuery(lines=10**6), container="c")["tailLines"] == str(logs.MAX_LINES)
    assert "sinceTime" not in logs.log_params(LogQuery(), container="c")


@pytest.mark.parametrize(
    ("stamp", "millis"),
    [
        ("2026-11-18T11:06:40.123456789Z", 1_795_000_000_123),
        ("2026-11-18T11:06:40.5Z", 1_795_000_000_500),  # Go drops trailing zeros
        ("2026-11-18T11:06:40Z", 1_795_000_000_000),  # and the whole fraction when zero
        ("2026-11-18T12:06:40.25+01:00", 1_795_000_000_250),
    ],
)
def test_timestamps_of_every_rfc3339_shape(stamp: str, millis: int) -> None:
    [line] = logs.parse_lines(f"{stamp} hello world\n")
    assert (line.timestamp_ms, line.message) == (millis, "hello world")


def test_a_line_without_a_timestamp_keeps_the_previous_time() -> None:
    text = "2026-11-18T11:06:40.5Z first\ncut off by limitBytes"
    lines = logs.parse_lines(text)
    assert [(x.timestamp_ms, x.message) for x in lines] == [
        (1_795_000_000_500, "first"),
        (1_795_000_000_500, "cut off by limitBytes"),
    ]


def test_parse_drops_lines_before_since_and_keeps_the_newest() -> None:
    text = "".join(f"2026-11-18T11:06:4{i}Z l{i}\n" for i in range(6))
    lines = logs.parse_lines(text, since_ms=1_795_000_002_000, limit=3)
    assert [x.message for x in lines] == ["l3", "l4", "l5"]
    lines = logs.parse_lines(text, since_ms=1_795_000_004_000)
    assert [x.message for x in lines] == ["l4", "l5"]


def test_very_long_lines_are_cut() -> None:
    [line] = logs.parse_lines("2026-11-18T11:06:40Z " + "x" * (logs.MAX_LINE_CHARS + 10))
    assert len(line.message) == logs.MAX_LINE_CHARS


@pytest.mark.parametrize(
    ("query", "wanted"),
    [
        (LogQuery(), True),
        (LogQuery(sources=("sandbox",)), True),
        (LogQuery(sources=("gateway",)), False),
        (LogQuery(min_level="debug"), True),
        (LogQuery(min_level="INFO"), True),
        (LogQuery(min_level="warning"), False),
        (LogQuery(min_level="ERROR"), False),
    ],
)
def test_which_queries_container_output_can_match(query: LogQuery, wanted: bool) -> None:
    assert logs.wanted(query) is wanted
