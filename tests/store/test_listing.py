"""Lists: key paging, workspaces, and Kubernetes label selectors evaluated in SQL."""

from __future__ import annotations

import pytest

from shellgate.store import (
    InvalidPageToken,
    InvalidSelector,
    Store,
    WriteCondition,
)

MUST_CREATE = WriteCondition.MUST_CREATE


async def seed(store: Store, labels_by_id: dict[str, dict[str, str]]) -> None:
    for object_id, labels in labels_by_id.items():
        await store.put_if("sandbox", object_id, f"n-{object_id}", b"", labels, MUST_CREATE)


async def ids(store: Store, selector: str = "", **kwargs: object) -> list[str]:
    page = await store.list("sandbox", selector=selector, limit=1000, **kwargs)  # type: ignore[arg-type]
    return sorted(record.id for record in page.records)


async def test_key_paging_walks_every_row_once_in_creation_order(store: Store) -> None:
    await seed(store, {f"id{n}": {} for n in range(5)})
    seen: list[str] = []
    sizes: list[int] = []
    token = ""
    while True:
        page = await store.list("sandbox", limit=2, page_token=token)
        sizes.append(len(page.records))
        seen += [record.id for record in page.records]
        token = page.next_page_token
        if not token:
            break
    assert sizes == [2, 2, 1]
    assert sorted(seen) == [f"id{n}" for n in range(5)]
    assert len(set(seen)) == 5
    keys = [(r.created_at_ms, r.id) for r in (await store.list("sandbox")).records]
    assert keys == sorted(keys)


async def test_paging_survives_deletes_between_pages(store: Store) -> None:
    await seed(store, {f"id{n}": {} for n in range(6)})
    first = await store.list("sandbox", limit=3)
    await store.delete_if("sandbox", first.records[-1].id, 1)
    rest = await store.list("sandbox", limit=3, page_token=first.next_page_token)
    assert {r.id for r in rest.records}.isdisjoint(r.id for r in first.records)
    assert len(first.records) + len(rest.records) == 6


async def test_exact_page_has_no_next_token(store: Store) -> None:
    await seed(store, {"a": {}, "b": {}})
    page = await store.list("sandbox", limit=2)
    assert len(page.records) == 2 and page.next_page_token == ""


async def test_bad_page_token_is_rejected(store: Store) -> None:
    with pytest.raises(InvalidPageToken):
        await store.list("sandbox", page_token="not-a-token")


async def test_workspaces_partition_lists(store: Store) -> None:
    await store.put_if("sandbox", "a", "same", b"", {}, MUST_CREATE, workspace="one")
    await store.put_if("sandbox", "b", "same", b"", {}, MUST_CREATE, workspace="two")
    await store.put_if("provider", "c", "same", b"", {}, MUST_CREATE, workspace="one")
    assert await ids(store, workspace="one") == ["a"]
    assert await ids(store, workspace="two") == ["b"]
    assert await ids(store, workspace=None) == ["a", "b"]
    assert await ids(store) == []


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", ["both", "dev", "none", "prod"]),
        ("env=prod", ["both", "prod"]),
        ("env==prod", ["both", "prod"]),
        ("env=prod,team=a", ["both"]),
        ("env=staging", []),
        ("env!=prod", ["dev", "none"]),
        ("env in (dev, prod)", ["both", "dev", "prod"]),
        ("env notin (dev)", ["both", "none", "prod"]),
        ("team", ["both"]),
        ("!team", ["dev", "none", "prod"]),
        ("example.com/tier=gold", ["dev"]),
        ("env=", []),
    ],
)
async def test_selectors(store: Store, selector: str, expected: list[str]) -> None:
    await seed(
        store,
        {
            "prod": {"env": "prod"},
            "both": {"env": "prod", "team": "a"},
            "dev": {"env": "dev", "example.com/tier": "gold"},
            "none": {},
        },
    )
    assert await ids(store, selector) == expected


async def test_selector_pages(store: Store) -> None:
    await seed(store, {f"id{n}": {"k": "v" if n % 2 else "w"} for n in range(10)})
    first = await store.list("sandbox", selector="k=v", limit=3)
    second = await store.list("sandbox", selector="k=v", limit=3, page_token=first.next_page_token)
    assert len(first.records) == 3 and len(second.records) == 2
    assert second.next_page_token == ""


@pytest.mark.parametrize(
    "selector",
    [
        "env=prod,",
        "=prod",
        "env in prod",
        "env in (prod",
        "env prod",
        "Bad Key=1",
        "env=value with space",
        "k=v'; DROP TABLE objects; --",
        "a/b/c=d",
        "x" * 64 + "=v",
        "k=" + "v" * 64,
    ],
)
async def test_malformed_selectors_are_rejected(store: Store, selector: str) -> None:
    with pytest.raises(InvalidSelector):
        await store.list("sandbox", selector=selector)
    assert await store.get("sandbox", "anything") is None  # the table is still there


async def test_selector_keys_and_values_are_bound_not_spliced(store: Store) -> None:
    await seed(store, {"a": {"k.io/x": "1"}, "b": {"k.io/x": "2"}})
    assert await ids(store, "k.io/x in (1)") == ["a"]
    assert await ids(store, "k.io/x notin (1)") == ["b"]


@pytest.mark.parametrize(
    "raw",
    ['[18446744073709551616,"x"]', '[-1,"x"]', '[true,"x"]', "[1,2]", "{}", "[1]"],
)
async def test_crafted_page_tokens_are_rejected(store: Store, raw: str) -> None:
    import base64

    token = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    with pytest.raises(InvalidPageToken):
        await store.list("sandbox", page_token=token)


async def test_a_page_ends_early_at_its_byte_budget(store: Store) -> None:
    """Large rows make short pages, never a huge response; every row is still reached once."""
    from shellgate.store.paging import MAX_PAGE_BYTES

    row_bytes = MAX_PAGE_BYTES // 3 + 1
    for n in range(7):
        payload = bytes([n]) * row_bytes
        await store.put_if("sandbox", f"id{n}", f"n{n}", payload, {}, MUST_CREATE)
    sizes, seen, token = [], [], ""
    while True:
        page = await store.list("sandbox", limit=1000, page_token=token)
        sizes.append(len(page.records))
        assert sum(len(r.payload) for r in page.records) <= MAX_PAGE_BYTES
        seen += [r.id for r in page.records]
        token = page.next_page_token
        if not token:
            break
    assert sizes == [2, 2, 2, 1]
    assert seen == [f"id{n}" for n in range(7)]


async def test_selectors_follow_label_changes_and_deletes(store: Store) -> None:
    """The label index (SQLite's object_labels table, Postgres' GIN) follows every write:
    a label changed, a label removed, labels kept by an update that passes none, a delete."""
    await seed(store, {"a": {"team": "x", "tier": "1"}, "b": {"team": "y"}})
    await store.put_if("sandbox", "a", "n-a", b"1", {"team": "y"}, WriteCondition.match(1))
    await store.put_if("sandbox", "b", "n-b", b"1", None, WriteCondition.match(1))  # kept
    assert await ids(store, "team=x") == []
    assert await ids(store, "team=y") == ["a", "b"]
    assert await ids(store, "tier") == []
    assert await ids(store, "!tier") == ["a", "b"]
    assert await ids(store, "team in (x, y),team!=z") == ["a", "b"]
    assert await store.delete_if("sandbox", "b", 2)
    assert await ids(store, "team=y") == ["a"]
    await seed(store, {"b": {"team": "x"}})  # the same id again, with new labels
    assert await ids(store, "team=x") == ["b"]
    assert await ids(store, "team notin (x)") == ["a"]


async def test_a_selector_is_bounded_to_its_object_type(store: Store) -> None:
    await seed(store, {"s": {"team": "x"}})
    await store.put_if("provider", "p", "p", b"", {"team": "x"}, MUST_CREATE)
    page = await store.list("provider", selector="team=x")
    assert [record.id for record in page.records] == ["p"]
    assert await ids(store, "team=x") == ["s"]
