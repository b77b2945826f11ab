"""Label selectors are bounded before they are parsed, and parsed in one pass.

A selector comes from any caller. Unbounded, ``" ," * 800000`` held the event loop for 50 s
with a parser that copied the rest of the string per token; and selectors of about a thousand
terms reached SQLite's expression-depth limit and Postgres' parameter limit as UNAVAILABLE.
"""

from __future__ import annotations

import pytest

from shellgate.store import InvalidSelector, Store, WriteCondition
from shellgate.store.errors import QUOTE_LIMIT, quoted
from shellgate.store.selectors import (
    MAX_REQUIREMENTS,
    MAX_SELECTOR_LENGTH,
    MAX_SET_VALUES,
    Operator,
    parse_selector,
)


def test_a_selector_over_the_length_limit_is_refused_before_parsing() -> None:
    with pytest.raises(InvalidSelector) as refused:
        parse_selector(" ," * 800_000)
    assert "maximum length" in str(refused.value)
    assert len(str(refused.value)) < 200


@pytest.mark.parametrize(
    ("selector", "why"),
    [
        pytest.param(",".join(f"k{n}" for n in range(MAX_REQUIREMENTS + 1)), "requirements"),
        pytest.param(
            "k in (" + ",".join(f"v{n}" for n in range(MAX_SET_VALUES + 1)) + ")", "values"
        ),
    ],
)
def test_counts_over_the_limits_are_refused(selector: str, why: str) -> None:
    assert len(selector) <= MAX_SELECTOR_LENGTH
    with pytest.raises(InvalidSelector) as refused:
        parse_selector(selector)
    assert why in str(refused.value)


def test_a_long_blank_tail_is_blank() -> None:
    assert parse_selector("k=v" + " " * (MAX_SELECTOR_LENGTH - 3)) == parse_selector("k=v")
    assert parse_selector(" " * MAX_SELECTOR_LENGTH) == []


def test_errors_quote_a_short_prefix_of_the_input() -> None:
    selector = "k=v," + "!" * (MAX_SELECTOR_LENGTH - 4)
    with pytest.raises(InvalidSelector) as refused:
        parse_selector(selector)
    assert len(str(refused.value)) < QUOTE_LIMIT + 120
    assert quoted("x" * 1000).endswith("(1000 characters)")
    assert quoted("short") == "'short'"


async def test_the_largest_selector_allowed_runs_on_the_database(store: Store) -> None:
    """At the limits, the SQL stays inside what SQLite and Postgres accept."""
    await store.put_if("sandbox", "a", "a", b"", {"k0": "v0"}, WriteCondition.MUST_CREATE)
    per_set = MAX_SET_VALUES // MAX_REQUIREMENTS
    requirements = [
        f"k{n} in ({','.join(f'v{m}' for m in range(per_set))})" for n in range(MAX_REQUIREMENTS)
    ]
    selector = ",".join(requirements)
    assert len(selector) <= MAX_SELECTOR_LENGTH
    parsed = parse_selector(selector)
    assert len(parsed) == MAX_REQUIREMENTS
    assert {r.operator for r in parsed} == {Operator.IN}
    page = await store.list("sandbox", selector=selector)
    assert page.records == []  # k1..k63 are absent on "a"
    only_first = ",".join(f"!k{n}" for n in range(1, MAX_REQUIREMENTS)) + ",k0 in (v0)"
    assert [r.id for r in (await store.list("sandbox", selector=only_first)).records] == ["a"]
