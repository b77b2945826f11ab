"""Keeps ``bench.scale`` from rotting: every part at tiny sizes, no timed assertion.

The document it writes is checked for its shape only, and for the one promise that matters
when two benchmarks share docs/benchmarks.md: only the text between its markers changes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import scale
from bench.scale_report import BEGIN, END, replace_section

OTHER = "# Store benchmark\n\nbench.store_cas wrote this.\n"


def rows_of(section: str, backend: str) -> list[str]:
    """The second cell of every table row that starts with ``backend``."""
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in section.splitlines()]
    return [row[1] for row in cells if row and row[0] == backend and len(row) > 2]


def test_the_section_is_appended_then_replaced_and_nothing_else_changes() -> None:
    first = replace_section(OTHER, "one\n")
    assert first.startswith(OTHER) and f"{BEGIN}\none\n{END}" in first
    tail = "\n## Written later by hand\n"
    second = replace_section(first + tail, "two\n")
    assert second == OTHER + f"\n{BEGIN}\ntwo\n{END}\n" + tail
    assert replace_section("", "x") == f"{BEGIN}\nx\n{END}\n"


def test_scale_runs_on_sqlite_and_writes_its_section(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    output.write_text(OTHER)
    saved = tmp_path / "results.json"
    argv = [
        "--backends",
        "sqlite",
        "--sizes",
        "30,60",
        "--streams",
        "",
        "--attach-seconds",
        "0.2",
        "--local-sandboxes",
        "2",
        "--startup-sizes",
        "25",
        "--soak-minutes",
        "0",
        "--output",
        str(output),
        "--save",
        str(saved),
    ]
    assert scale.main(argv) == 0
    text = output.read_text()
    assert text.startswith(OTHER)
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    # the store table, the selector table, the attach table's two cases, then startup
    assert rows_of(section, "sqlite")[:4] == ["30", "60", "30", "60"]
    assert len(rows_of(section, "sqlite")) == 7
    assert rows_of(section, "sqlite")[-1] == "25"
    for expected in ("team=nomatch", "one shared by 16", "sleep infinity", "GetSandbox answered"):
        assert expected in section, expected
    assert (tmp_path / "img" / "scale_lists.png").stat().st_size > 0
    baseline = scale.load_results(str(saved))
    assert baseline is not None and [r.rows for r in baseline.store] == [30, 60]
    assert [r.rows for r in baseline.startup] == [25]
    assert scale.main([*argv, "--baseline", str(saved)]) == 0
    assert "### Before" in output.read_text()


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_scale_runs_the_watch_fanout_on_postgres(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHELLGATE_BENCH_DATABASE_URL", pg_dsn)
    output = tmp_path / "benchmarks.md"
    argv = [
        "--backends",
        "postgres",
        "--sizes",
        "20",
        "--streams",
        "2,3",
        "--seconds",
        "0.5",
        "--rate",
        "10",
        "--attach-seconds",
        "0.2",
        "--local-sandboxes",
        "0",
        "--startup-sizes",
        "15",
        "--soak-minutes",
        "0.05",
        "--output",
        str(output),
    ]
    assert scale.main(argv) == 0
    text = output.read_text()
    assert rows_of(text, "postgres")[:2] == ["20", "20"]
    assert "| postgres | 0.05 " in text  # the soak's row
    assert (tmp_path / "img" / "scale_soak.png").stat().st_size > 0
    assert "| 3 " in text
    assert "GetSandbox answered" in text  # the startup part, on the database the others grew
    assert (tmp_path / "img" / "scale_watch.png").stat().st_size > 0


@pytest.mark.timeout(120)
def test_scale_runs_the_sqlite_fanout_and_the_soak(tmp_path: Path) -> None:
    """The fan-out on SQLite (written through the gateway's RPCs, with a 0-stream row) and
    a few seconds of the soak against a real ``shellgate serve``: every call of the mix is
    one the gateway accepts, and the results survive a round trip through ``--save``."""
    output = tmp_path / "benchmarks.md"
    saved = tmp_path / "results.json"
    argv = [
        "--backends",
        "sqlite",
        "--sizes",
        "20",
        "--streams",
        "2",
        "--seconds",
        "0.5",
        "--rate",
        "10",
        "--attach-seconds",
        "0",
        "--local-sandboxes",
        "0",
        "--startup-sizes",
        "",
        "--soak-minutes",
        "0.05",
        "--soak-rate",
        "40",
        "--output",
        str(output),
        "--save",
        str(saved),
    ]
    assert scale.main(argv) == 0
    section = output.read_text().split(BEGIN, 1)[1].split(END, 1)[0]
    # the store table, the selector table, the fan-out with nothing watched and with 2
    # streams, then the soak
    assert rows_of(section, "sqlite") == ["20", "20", "0", "2", "0.05"]
    results = scale.load_results(str(saved))
    assert results is not None
    assert [(w.backend, w.streams) for w in results.watch] == [("sqlite", 0), ("sqlite", 2)]
    assert results.watch[1].writes > 0
    (soak,) = results.soak
    assert soak.ops > 0 and soak.error_kinds == {} and soak.errors == 0
    assert len(soak.samples) >= 2 and soak.rss_max_mb >= soak.rss_start_mb > 0
    for image in ("scale_watch.png", "scale_soak.png"):
        assert (tmp_path / "img" / image).stat().st_size > 0
    # A run of no parts that merges the saved one shows its rows, and says it merged them.
    merged_output = tmp_path / "merged.md"
    nothing = ["--sizes", "", "--streams", "", "--attach-seconds", "0", "--local-sandboxes", "0"]
    nothing += ["--startup-sizes", "", "--soak-minutes", "0", "--backends", "sqlite"]
    assert scale.main([*nothing, "--merge", str(saved), "--output", str(merged_output)]) == 0
    merged = merged_output.read_text().split(BEGIN, 1)[1].split(END, 1)[0]
    assert rows_of(merged, "sqlite") == ["20", "20", "0", "2", "0.05"]
    assert f"The rows of `{saved}`" in merged
