"""Lists: key paging, workspaces, and Kubernetes label selectors evaluated in SQL."""

from __future__ import annotations

from typing import Any

import pytest

from shellgate.api import openshell_pb2
from shellgate.store import (
    InvalidPageToken,
    InvalidSelector,
    Store,
    WriteCondition,
)
from tests.support.objects import sandbox

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


PAGED_LABELS = {
    f"id{n:02}": {
        **({"k": "v"} if n % 2 else {"k": "w"} if n % 3 else {}),
        **({"j": "x"} if n % 5 in (1, 2) else {}),
    }
    for n in range(30)
}


def expected_ids(selector: str, workspace: str | None) -> list[str]:
    """What the selector selects from PAGED_LABELS, evaluated here in Python."""
    tests = {
        "k=v": lambda labels: labels.get("k") == "v",
        "k in (v, w)": lambda labels: labels.get("k") in ("v", "w"),
        "k in (w, v, w)": lambda labels: labels.get("k") in ("v", "w"),
        "k in (v, w, a, b, c, d, e, f, g, h)": lambda labels: labels.get("k") in ("v", "w"),
        "k": lambda labels: "k" in labels,
        "k=v,j=x": lambda labels: labels.get("k") == "v" and labels.get("j") == "x",
        "j,k in (v, w)": lambda labels: "j" in labels and labels.get("k") in ("v", "w"),
        "k in (v, w),k!=w": lambda labels: labels.get("k") == "v",
        "k=v,!j": lambda labels: labels.get("k") == "v" and "j" not in labels,
        "k!=v": lambda labels: labels.get("k") != "v",
        "k=nomatch": lambda labels: False,
    }
    return [
        object_id
        for n, (object_id, labels) in enumerate(PAGED_LABELS.items())
        if tests[selector](labels) and workspace in (None, f"w{n % 2}")
    ]


@pytest.mark.parametrize("workspace", [None, "w1"], ids=["all-workspaces", "one-workspace"])
@pytest.mark.parametrize(
    "selector",
    [
        "k=v",
        "k in (v, w)",
        "k in (w, v, w)",
        "k in (v, w, a, b, c, d, e, f, g, h)",
        "k",
        "k=v,j=x",
        "j,k in (v, w)",
        "k in (v, w),k!=w",
        "k=v,!j",
        "k!=v",
        "k=nomatch",
    ],
)
async def test_selector_pages_walk_every_match_once_in_creation_order(
    store: Store, selector: str, workspace: str | None
) -> None:
    """Paged with a selector, in one workspace or across all, every matching row comes once,
    in (created_at_ms, id) order, and no other: whichever index the backend walks, a set
    merges its values' walks (SQLite; a wider set is one sorted walk), and the page token
    resumes each one where the page ended."""
    for n, (object_id, labels) in enumerate(PAGED_LABELS.items()):
        await store.put_if(
            "sandbox", object_id, f"n-{object_id}", b"", labels, MUST_CREATE, workspace=f"w{n % 2}"
        )
    await store.put_if("provider", "p", "p", b"", {"k": "v", "j": "x"}, MUST_CREATE, workspace="w1")
    seen: list[tuple[int, str]] = []
    token = ""
    while True:
        page = await store.list(
            "sandbox", workspace=workspace, selector=selector, limit=4, page_token=token
        )
        assert len(page.records) <= 4
        seen += [(record.created_at_ms, record.id) for record in page.records]
        token = page.next_page_token
        if not token:
            break
        assert len(page.records) == 4
    assert seen == sorted(seen)
    assert sorted(object_id for _, object_id in seen) == expected_ids(selector, workspace)


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
    """The label index (object_labels, kept by triggers on both backends) follows every write:
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


async def label_tables(store: Store) -> tuple[list[Any], list[Any]]:
    """object_labels as it is, and as the labels column says it must be."""
    each = "json_each" if store.backend == "sqlite" else "jsonb_each_text"
    table = await store._rows(  # type: ignore[attr-defined]
        "SELECT key, value, object_type, created_at_ms, object_id, workspace FROM object_labels "
        "ORDER BY 1, 2, 3, 4, 5",
        (),
    )
    column = await store._rows(  # type: ignore[attr-defined]
        "SELECT label.key, label.value, o.object_type, o.created_at_ms, o.id, o.workspace "
        f"FROM objects AS o, {each}(o.labels) AS label ORDER BY 1, 2, 3, 4, 5",
        (),
    )
    return [tuple(row) for row in table], [tuple(row) for row in column]


async def test_the_label_table_mirrors_the_labels_column(store: Store) -> None:
    """object_labels (kept by triggers, on both backends) holds exactly one row per label
    of every object, with the object's list order, through creates, label changes (by
    put_if and by a CAS update, which on Postgres rewrites only the labels that differ),
    updates that keep the labels, deletes and an id created again."""
    await seed(store, {"a": {"team": "x", "tier": "1"}, "b": {"team": "y"}, "c": {}})
    await store.put_if("sandbox", "a", "n-a", b"1", {"team": "y"}, WriteCondition.match(1))
    await store.put_if("sandbox", "b", "n-b", b"1", None, WriteCondition.match(1))
    await store.put_if("sandbox", "c", "n-c", b"1", {"new": "1"}, WriteCondition.match(1))
    assert await store.delete_if("sandbox", "b", 2)
    await seed(store, {"b": {"team": "z"}})
    created = await store.create_message(
        sandbox("m", labels={"team": "x", "keep": "1"}, workspace="w1")
    )

    def relabel(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
        message.metadata.labels["team"] = "w"
        return message

    def touch(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
        message.status.phase = openshell_pb2.SANDBOX_PHASE_READY
        return message

    for mutate in (relabel, touch):
        await store.update_message_cas(openshell_pb2.Sandbox, created.metadata.id, mutate)
    table, column = await label_tables(store)
    assert table == column
    assert len(table) == 5  # a: team; b: team; c: new; m: team, keep
    assert await ids(store, "team=w", workspace="w1") == [created.metadata.id]
    assert await ids(store, "keep=1", workspace="w1") == [created.metadata.id]
