"""ExecSandbox request bounds: at each limit passes, one over fails naming the field."""

from __future__ import annotations

import pytest

from shellgate.api import openshell_pb2
from shellgate.reconcilers.validation import (
    MAX_ENVIRONMENT_ENTRIES,
    MAX_EXEC_ARG_LEN,
    MAX_EXEC_ARGS,
    MAX_EXEC_STDIN,
    MAX_EXEC_TIMEOUT_SECONDS,
    MAX_EXEC_WORKDIR_LEN,
    MAX_REQUEST_ID_LEN,
    MAX_TERMINAL_SIZE,
    validate_exec_request,
)

Request = openshell_pb2.ExecSandboxRequest


def fields(request: Request) -> set[str]:
    return {v.field for v in validate_exec_request(request)}


def test_a_plain_request_is_valid() -> None:
    assert fields(Request(sandbox="s", command=["true"])) == set()


@pytest.mark.parametrize(
    ("at_limit", "over", "field"),
    [
        (
            Request(command=["x"] * MAX_EXEC_ARGS),
            Request(command=["x"] * (MAX_EXEC_ARGS + 1)),
            "command",
        ),
        (
            Request(command=["x", "a" * MAX_EXEC_ARG_LEN]),
            Request(command=["x", "a" * (MAX_EXEC_ARG_LEN + 1)]),
            "command argument",
        ),
        (
            Request(command=["x"], workdir="w" * MAX_EXEC_WORKDIR_LEN),
            Request(command=["x"], workdir="w" * (MAX_EXEC_WORKDIR_LEN + 1)),
            "workdir",
        ),
        (
            Request(command=["x"], stdin=b"i" * MAX_EXEC_STDIN),
            Request(command=["x"], stdin=b"i" * (MAX_EXEC_STDIN + 1)),
            "stdin",
        ),
        (
            Request(command=["x"], cols=MAX_TERMINAL_SIZE, rows=MAX_TERMINAL_SIZE),
            Request(command=["x"], cols=MAX_TERMINAL_SIZE + 1),
            "cols",
        ),
        (
            Request(command=["x"], request_id="r" * MAX_REQUEST_ID_LEN),
            Request(command=["x"], request_id="r" * (MAX_REQUEST_ID_LEN + 1)),
            "request_id",
        ),
        (
            Request(
                command=["x"], environment={f"K{i}": "v" for i in range(MAX_ENVIRONMENT_ENTRIES)}
            ),
            Request(
                command=["x"],
                environment={f"K{i}": "v" for i in range(MAX_ENVIRONMENT_ENTRIES + 1)},
            ),
            "environment",
        ),
        (
            Request(command=["x"], environment={"PAYLOAD": "p" * MAX_EXEC_ARG_LEN}),
            Request(command=["x"], environment={"PAYLOAD": "p" * (MAX_EXEC_ARG_LEN + 1)}),
            "environment value",
        ),
    ],
)
def test_limits(at_limit: Request, over: Request, field: str) -> None:
    assert fields(at_limit) == set()
    assert field in fields(over)


def test_timeouts() -> None:
    ok = Request(command=["x"])
    ok.execution_timeout.seconds = MAX_EXEC_TIMEOUT_SECONDS
    assert fields(ok) == set()
    for seconds in (MAX_EXEC_TIMEOUT_SECONDS + 1, -1):
        bad = Request(command=["x"])
        bad.execution_timeout.seconds = seconds
        assert fields(bad) == {"execution_timeout"}


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (Request(), "command"),
        (Request(command=[""]), "command"),
        (Request(command=["a\0b"]), "command"),
        (Request(command=["x"], workdir="a\0"), "workdir"),
        (Request(command=["x"], environment={"A=B": "v"}), "environment"),
        (Request(command=["x"], environment={"A": "v\0"}), "environment"),
        (Request(command=["x"], request_id="forged\nlog line"), "request_id"),
    ],
)
def test_shapes_that_cannot_run(request_: Request, field: str) -> None:
    assert field in fields(request_)
