"""attach_provider / detach_provider: limit against the fresh row, dedupe, candidate validation."""

from __future__ import annotations

import pytest

from shellgate.reconcilers import (
    MAX_PROVIDERS,
    InvalidArgument,
    attach_provider,
    detach_provider,
)

from .helpers import P, copy_of, sandbox


def names(n: int) -> list[str]:
    return [f"p{i}" for i in range(n)]


@pytest.mark.parametrize(
    ("stored", "name", "expected", "applied"),
    [
        pytest.param([], "gh", ["gh"], True, id="first provider"),
        pytest.param(["a", "b"], "gh", ["a", "b", "gh"], True, id="appended at the end"),
        pytest.param(names(31), "gh", [*names(31), "gh"], True, id="31 to 32"),
        pytest.param(["a", "gh"], "gh", ["a", "gh"], False, id="already attached"),
        pytest.param(
            ["a", "b", "a"], "c", ["a", "b", "c"], True, id="duplicates removed when appending"
        ),
        pytest.param(
            ["gh", "a", "gh"],
            "gh",
            ["gh", "a", "gh"],
            False,
            id="already attached with duplicates: unchanged",
        ),
        pytest.param(
            [*names(31), "p0"],
            "gh",
            [*names(31), "gh"],
            True,
            id="32 entries but 31 distinct: fits",
        ),
        pytest.param(names(32), "p5", names(32), False, id="full list, already attached"),
    ],
)
def test_attach(stored: list[str], name: str, expected: list[str], applied: bool) -> None:
    row = sandbox(P.SANDBOX_PHASE_READY, providers=stored)
    result = attach_provider(name)(copy_of(row))
    assert list(result.spec.providers) == expected
    assert (result != row) is applied


def test_attach_33rd_is_invalid_argument_and_nothing_changes() -> None:
    row = sandbox(P.SANDBOX_PHASE_READY, providers=names(MAX_PROVIDERS))
    candidate = copy_of(row)
    with pytest.raises(InvalidArgument) as raised:
        attach_provider("gh")(candidate)
    [violation] = raised.value.violations
    assert violation.field == "spec.providers"
    assert "exceeds maximum of 32 providers" in violation.description
    assert candidate == row


def test_attach_validates_the_candidate_spec() -> None:
    row = sandbox(P.SANDBOX_PHASE_READY)
    row.spec.log_level = "x" * 33
    candidate = copy_of(row)
    with pytest.raises(InvalidArgument) as raised:
        attach_provider("gh")(candidate)
    assert [v.field for v in raised.value.violations] == ["spec.log_level"]
    assert candidate == row


def test_attach_to_a_sandbox_without_spec_creates_the_list() -> None:
    row = sandbox(P.SANDBOX_PHASE_READY)
    row.ClearField("spec")
    assert list(attach_provider("gh")(row).spec.providers) == ["gh"]


@pytest.mark.parametrize(
    "factory",
    [pytest.param(attach_provider, id="attach"), pytest.param(detach_provider, id="detach")],
)
@pytest.mark.parametrize(
    ("name", "ok"),
    [
        pytest.param("", False, id="empty"),
        pytest.param("a" * 253, True, id="253 bytes"),
        pytest.param("a" * 254, False, id="254 bytes"),
    ],
)
def test_provider_name_is_checked_before_any_io(factory, name: str, ok: bool) -> None:
    if ok:
        factory(name)
        return
    with pytest.raises(InvalidArgument) as raised:
        factory(name)
    assert [v.field for v in raised.value.violations] == ["provider_name"]


def test_a_retry_decides_on_the_row_it_is_given() -> None:
    """The store runs the mutation once per attempt: each run decides on its fresh copy."""
    mutation = attach_provider("gh")
    assert list(mutation(sandbox(providers=[])).spec.providers) == ["gh"]
    found_attached = sandbox(providers=["gh"])  # a retry that found it attached by someone else
    assert mutation(copy_of(found_attached)) == found_attached


@pytest.mark.parametrize(
    ("stored", "name", "expected", "applied"),
    [
        pytest.param(["a", "gh", "b"], "gh", ["a", "b"], True, id="removed, order kept"),
        pytest.param(["gh", "a", "gh"], "gh", ["a"], True, id="every copy removed"),
        pytest.param(["a", "b"], "gh", ["a", "b"], False, id="absent: unchanged"),
        pytest.param([], "gh", [], False, id="empty list: unchanged"),
        pytest.param(["a", "a", "b"], "gh", ["a", "a", "b"], False, id="absent: no dedupe write"),
    ],
)
def test_detach(stored: list[str], name: str, expected: list[str], applied: bool) -> None:
    row = sandbox(P.SANDBOX_PHASE_READY, providers=stored)
    result = detach_provider(name)(copy_of(row))
    assert list(result.spec.providers) == expected
    assert (result != row) is applied
