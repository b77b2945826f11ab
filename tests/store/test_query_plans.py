"""Every paged query, the metrics count and the indexed label selectors are served by an
index, in index order: no full scan, no sort of the table (Postgres ``Sort``, SQLite's
``USE TEMP B-TREE``). A structural check, not a timing: the plan the database chooses for
the statement the store actually sends, over a table big enough (20,000 rows; analysed on
Postgres, as autovacuum would) that a planner would sort if no index gave the order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from shellgate.store import Store
from shellgate.store.paging import encode_page_token
from shellgate.store.sql import MAX_MERGED_VALUES

ROWS = 20_000
WORKSPACES = 4


async def seed_rows(store: Store) -> None:
    """ROWS sandboxes over WORKSPACES workspaces, every 10th labelled team=a, the rest team=b,
    with payloads of a real sandbox's size (300 bytes), inserted by the database itself (a
    row at a time through the store takes too long)."""
    if store.backend == "sqlite":
        await store._rows(  # type: ignore[attr-defined]
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO objects (object_type, id, name, workspace, payload, labels, "
            "resource_version, created_at_ms, updated_at_ms, status) "
            "SELECT 'sandbox', 'id' || i, 'n' || i, 'w' || (i % ?), zeroblob(300), "
            'CASE WHEN i % 10 = 0 THEN \'{"team":"a"}\' ELSE \'{"team":"b"}\' END, '
            "1, i, i, 'ready' FROM n",
            (ROWS, WORKSPACES),
        )
    else:
        await store._execute(  # type: ignore[attr-defined]
            "INSERT INTO objects (object_type, id, name, workspace, payload, labels, "
            "resource_version, created_at_ms, updated_at_ms, status) "
            f"SELECT 'sandbox', 'id' || i, 'n' || i, 'w' || (i % {WORKSPACES}), "
            "decode(repeat('00', 300), 'hex'), "
            'CASE WHEN i % 10 = 0 THEN \'{"team":"a"}\' ELSE \'{"team":"b"}\' END::jsonb, '
            f"1, i, i, 'ready' FROM generate_series(1, {ROWS}) AS i"
        )
        await all_visible(store)
        # Autovacuum analyses a table that grew like this; SQLite is left with the statistics
        # migration 005 wrote, as a production database is (nobody runs ANALYZE there).
        await store._execute("ANALYZE")  # type: ignore[attr-defined]


async def all_visible(store: Store) -> None:
    """VACUUM until every page is all-visible, as autovacuum leaves a table this size: what
    makes an index-only count possible. (The suite's server commits asynchronously, and a
    VACUUM right after the insert may find the commit not yet flushed and mark nothing.)"""
    for _ in range(50):
        await store._execute("VACUUM objects")  # type: ignore[attr-defined]
        pages, visible = await store._row(  # type: ignore[attr-defined]
            "SELECT relpages, relallvisible FROM pg_class WHERE relname = 'objects'", ()
        )
        if pages and visible == pages:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"VACUUM left {visible} of {pages} pages all-visible")


@pytest.fixture
async def seeded(store: Store) -> Store:
    await seed_rows(store)
    return store


class Recorder:
    """Records the statements the store sends, to explain exactly those."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.sent: list[tuple[str, Sequence[Any]]] = []
        self._rows = store._rows  # type: ignore[attr-defined]

    async def __call__(self, sql: str, params: Sequence[Any], *, read: bool = False) -> Any:
        self.sent.append((sql, params))
        return await self._rows(sql, params, read=read)

    async def plan(self) -> str:
        """The plan of the last statement sent, as one text."""
        sql, params = self.sent[-1]
        sqlite = self.store.backend == "sqlite"
        explain = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN (COSTS OFF) "
        rows = await self._rows(explain + sql, params, read=True)
        return "\n".join(str(row[-1]) for row in rows)


@pytest.fixture
def recorder(seeded: Store, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    spy = Recorder(seeded)
    monkeypatch.setattr(seeded, "_rows", spy)
    return spy


def assert_ordered_by(plan: str, index: str) -> None:
    assert index in plan, plan
    assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan
    assert "Seq Scan" not in plan and "SCAN objects\n" not in plan + "\n", plan


MIDDLE = encode_page_token(ROWS // 2, f"id{ROWS // 2}")


@pytest.mark.parametrize("token", ["", MIDDLE], ids=["first", "middle"])
async def test_a_list_across_workspaces_pages_in_index_order(
    recorder: Recorder, token: str
) -> None:
    page = await recorder.store.list("sandbox", workspace=None, limit=100, page_token=token)
    assert len(page.records) == 100
    assert_ordered_by(await recorder.plan(), "objects_type_order_idx")


@pytest.mark.parametrize("token", ["", MIDDLE], ids=["first", "middle"])
async def test_a_list_in_one_workspace_pages_in_index_order(recorder: Recorder, token: str) -> None:
    page = await recorder.store.list("sandbox", workspace="w1", limit=100, page_token=token)
    assert len(page.records) == 100
    assert_ordered_by(await recorder.plan(), "objects_list_idx")


async def test_the_status_count_reads_an_index_only(recorder: Recorder) -> None:
    assert await recorder.store.count_by_status("sandbox") == {"ready": ROWS}
    plan = await recorder.plan()
    assert "objects_type_status_idx" in plan, plan
    assert "Seq Scan" not in plan, plan


WIDE_SET = f"team in (a, b, {', '.join(f'c{n}' for n in range(MAX_MERGED_VALUES - 1))})"


def matching(selector: str, workspace: str | None, token: str) -> int:
    """How many of a first page of 100 the seeded rows give (team=a on every 10th)."""
    teams = {
        "team=a": {"a"},
        "team=nomatch": set(),
        "team in (nomatch, other)": set(),
        "team in (a, b)": {"a", "b"},
        WIDE_SET: {"a", "b"},
        "team": {"a", "b"},
        "nomatch": set(),
        "team=a,team": {"a"},
        "team in (a, nomatch),team!=b": {"a"},
    }[selector]
    start = ROWS // 2 + 1 if token else 1
    rows = [
        i
        for i in range(start, ROWS + 1)
        if ("a" if i % 10 == 0 else "b") in teams and workspace in (None, f"w{i % WORKSPACES}")
    ]
    return min(100, len(rows))


@pytest.mark.parametrize("token", ["", MIDDLE], ids=["first", "middle"])
@pytest.mark.parametrize("workspace", [None, "w0"], ids=["all-workspaces", "one-workspace"])
@pytest.mark.parametrize(
    "selector",
    [
        "team=a",
        "team=nomatch",
        "team in (nomatch, other)",
        "team in (a, b)",
        WIDE_SET,
        "team",
        "nomatch",
        "team=a,team",
        "team in (a, nomatch),team!=b",
    ],
)
async def test_equality_set_and_existence_selectors_use_the_label_index(
    recorder: Recorder, selector: str, workspace: str | None, token: str
) -> None:
    """Both backends walk the leading requirement's label index in list order, the objects
    only looked up by id for each label row (so a page reads about a page of rows whether
    none, 10 % or every row matches), the other requirements tested on that row (probes by
    key on SQLite, the JSONB labels on Postgres); a set is one such walk per value, and only
    their first pages (at most 101 rows each) are merged (a set wider than
    MAX_MERGED_VALUES is one walk whose matches are sorted)."""
    page = await recorder.store.list(
        "sandbox", workspace=workspace, selector=selector, limit=100, page_token=token
    )
    assert len(page.records) == matching(selector, workspace, token)
    plan = await recorder.plan()
    assert "Seq Scan" not in plan and "SCAN objects\n" not in plan + "\n", plan
    values = len(set(selector.partition(" in (")[2].partition(")")[0].split(", ")) - {""})
    arms = values if 1 < values <= MAX_MERGED_VALUES else 1
    if recorder.store.backend == "postgres":
        assert_postgres_walks(plan, arms, sorted_matches=values > MAX_MERGED_VALUES)
        return
    lines = plan.splitlines()
    walks = [line for line in lines if line.startswith("SEARCH walk ")]
    assert len(walks) == arms, plan
    assert all("PRIMARY KEY" in line or "object_labels_" in line for line in walks), plan
    # Each walk is an outer loop that objects joins by id: nothing else is scanned or sorted.
    for line in lines:
        if line.startswith("SEARCH objects "):
            assert "sqlite_autoindex_objects_1 (id=?)" in line, plan
        assert not line.startswith("SCAN") or line.startswith("SCAN arm"), plan
    sorts = lines.count("USE TEMP B-TREE FOR ORDER BY")
    # A set's merge sorts its walks' pages; a wider set sorts its matching rows.
    assert sorts == (arms if arms > 1 else int(values > MAX_MERGED_VALUES)), plan
    if arms > 1:
        assert "MERGE (UNION ALL)" in plan, plan


def assert_postgres_walks(plan: str, arms: int, *, sorted_matches: bool = False) -> None:
    """Postgres' plan walks object_labels ``arms`` times, each walk the outer side of a
    nested loop that looks objects up by primary key; a Sort only merges the walks' pages
    (or, for a set wider than MAX_MERGED_VALUES, its matches); no bitmap or GIN scan."""
    lines = [line.strip().removeprefix("->  ") for line in plan.splitlines()]
    walks = [line for line in lines if " on object_labels walk" in line]
    assert len(walks) == arms, plan
    assert all(" using object_labels_" in line for line in walks), plan
    assert lines.count("Nested Loop") == arms, plan
    scans = [line for line in lines if " on objects" in line]
    lookups = [line for line in scans if line.startswith("Index Scan using objects_pkey on ")]
    assert len(lookups) == arms, plan
    # The lateral subquery's own scan node, and nothing else, may name objects besides.
    subqueries = [line for line in scans if line.startswith("Subquery Scan on objects")]
    assert len(lookups) + len(subqueries) == len(scans), plan
    assert "Bitmap" not in plan and "labels_gin" not in plan, plan
    sorts = sum(line in ("Sort", "Incremental Sort") for line in lines)
    assert sorts <= (1 if arms > 1 or sorted_matches else 0), plan


@pytest.mark.parametrize("selector", ["team!=a", "!nomatch", "team notin (b)"])
async def test_negative_selectors_walk_the_order_index_probing_labels(
    recorder: Recorder, selector: str
) -> None:
    """A negative requirement cannot lead (its rows are those missing from the label
    table): the page walks the objects' order index and probes each row's labels by key."""
    await recorder.store.list("sandbox", workspace=None, selector=selector, limit=100)
    plan = await recorder.plan()
    assert_ordered_by(plan, "objects_type_order_idx")
    if recorder.store.backend == "sqlite":
        assert "SEARCH probe USING COVERING INDEX object_labels_key_idx" in plan, plan


async def test_the_rarest_requirement_leads(recorder: Recorder) -> None:
    """Of several requirements the index could walk, SQLite walks the one selecting the
    fewest rows (counted first, up to a bound): here team=a (1,000 rows in w0), not the
    set written before it, which every row matches and which would read ten rows per row
    of the page."""
    selector = "team in (a, b),team=a"
    page = await recorder.store.list("sandbox", workspace="w0", selector=selector, limit=100)
    assert len(page.records) == 100
    plan = await recorder.plan()
    assert "Seq Scan" not in plan and "SCAN objects\n" not in plan + "\n", plan
    assert len(recorder.sent) == 2  # the counts, then the page
    if recorder.store.backend == "sqlite":
        assert "MERGE" not in plan and "TEMP B-TREE" not in plan, plan
        walk = "SEARCH walk USING COVERING INDEX object_labels_workspace_idx "
        assert walk + "(key=? AND value=? AND object_type=? AND workspace=?)" in plan, plan
    else:
        assert_postgres_walks(plan, 1)
        assert "object_labels_workspace_idx on object_labels walk" in plan, plan
        assert "value = 'a'" in plan or "value = $" in plan, plan
