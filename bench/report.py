"""Turn results into the console tables, this benchmark's section of docs/benchmarks.md and
the scaling plot.

The section is generated in full by every run and written between its own markers, so other
benchmarks' sections of the same file stay as they are; nothing in it is edited by hand.
Tables are pipe tables padded to line up, so the same text reads well in a terminal and
renders as Markdown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.compare import WRITERS, Comparison, ratios
from bench.loads import MAX_PROCESSES, STEADY_RATE
from bench.machine import MachineFacts
from bench.objects import bench_sandbox
from bench.stats import LoadResult, percentile
from bench.suite import BACKENDS, BackendResults
from bench.workloads import Timing
from shellgate.store import RetryPolicy

RATIO_TARGET = 0.85
ETCD_TARGET = 2.0
EXHAUSTED_TARGET_PCT = 1.0


# ----- formatting -------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:,.1f}"


def ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:,.1f}"


def yes_no(met: bool) -> str:
    return "met" if met else "**NOT met**"


# ----- tables -----------------------------------------------------------------------------


def spread(values: Sequence[float]) -> str:
    """The median and the range: ``1.02 [0.91-1.10]``."""
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{percentile(ordered, 50):.2f} [{ordered[0]:.2f}-{ordered[-1]:.2f}]"


def rate_spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{rate(percentile(ordered, 50))} [{rate(ordered[0])}-{rate(ordered[-1])}]"


def _load_row(backend: str, result: LoadResult) -> list[str]:
    spec = result.spec
    offered = spec.offered_per_s
    return [
        backend,
        spec.name,
        f"{spec.writers}/{spec.processes}/{spec.objects}",
        "max" if offered is None else rate(offered),
        rate(result.goodput),
        rate(result.conflicts_per_s),
        f"{result.exhausted} ({result.exhausted_pct:.1f} %)",
        str(result.errors),
        "-" if offered is None else str(result.missed_slots),
        ms(result.latency.p50_ms),
        ms(result.latency.p99_ms),
        f"{result.expected}/{result.final}/{result.lost}",
    ]


LOAD_HEADERS = [
    "backend",
    "load",
    "writers/procs/objects",
    "offered/s",
    "goodput/s",
    "conflicts/s",
    "exhausted calls",
    "errors",
    "missed slots",
    "p50 ms",
    "p99 ms",
    "expected/final/lost",
]


def loads_table(results: Sequence[BackendResults]) -> str:
    rows = [_load_row(r.backend, r.loads[key]) for r in results for key in ("c", "d", "e")]
    return markdown_table(LOAD_HEADERS, rows)


def sweep_table(results: Sequence[BackendResults]) -> str:
    rows = [_load_row(r.backend, load) for r in results for load in r.sweep]
    return markdown_table(LOAD_HEADERS, rows)


# ----- targets ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    subject: str
    name: str
    measured: str
    met: bool | None  # None: not measured in this run


def targets(comparison: Comparison, results: Sequence[BackendResults]) -> list[Target]:
    found: list[Target] = []
    for backend in BACKENDS:
        found += _backend_targets(comparison, backend)
    found += _etcd_target(comparison)
    for many in comparison.many:
        found.append(
            Target(
                many.contender.key,
                f"{WRITERS} writers: nothing acknowledged lost",
                f"{many.lost} lost of {many.expected}",
                many.lost == 0,
            )
        )
    for r in results:
        steady = r.loads["c"]
        found += [
            Target(
                r.backend,
                "(c) zero lost updates",
                f"{steady.lost} lost of {steady.expected}",
                steady.lost == 0,
            ),
            Target(
                r.backend,
                f"(c) exhausted calls < {EXHAUSTED_TARGET_PCT:g} %",
                f"{steady.exhausted_pct:.2f} % ({steady.exhausted} of {steady.calls})",
                steady.exhausted_pct < EXHAUSTED_TARGET_PCT,
            ),
        ]
    return found


def _backend_targets(comparison: Comparison, backend: str) -> list[Target]:
    store = comparison.single_of(backend, "shellgate")
    floor = comparison.single_of(backend, "floor")
    peer = comparison.single_of(backend, "peer")
    if store is None or floor is None:
        return []
    to_floor = ratios(store, floor)
    found = [
        Target(
            backend,
            f"one writer: shellgate / physical floor >= {RATIO_TARGET}",
            f"{spread(to_floor)} (median [min-max] of {len(to_floor)} rounds)",
            median(to_floor) >= RATIO_TARGET,
        )
    ]
    if peer is not None:
        to_peer = ratios(store, peer)
        found.append(
            Target(
                backend,
                "one writer: ahead of SQLAlchemy",
                f"{rate(store.median_rate)} vs {rate(peer.median_rate)} ops/s; "
                f"per round {spread(to_peer)}x",
                median(to_peer) > 1.0,
            )
        )
    many_store = comparison.many_of(backend, "shellgate")
    many_peer = comparison.many_of(backend, "peer")
    if many_store is not None and many_peer is not None:
        found.append(
            Target(
                backend,
                f"{WRITERS} writers: ahead of SQLAlchemy",
                f"{rate(many_store.median_goodput)} vs {rate(many_peer.median_goodput)} ok/s",
                many_store.median_goodput > many_peer.median_goodput,
            )
        )
    return found


def _etcd_target(comparison: Comparison) -> list[Target]:
    store = comparison.single_of("postgres", "shellgate")
    if store is None:
        return []
    name = f"one writer: shellgate on Postgres >= {ETCD_TARGET:g}x etcd"
    etcd = comparison.single_of("etcd", "peer")
    if etcd is None:
        return [Target("postgres", name, "etcd skipped: not installed", None)]
    to_etcd = ratios(store, etcd)
    measured = (
        f"{rate(store.median_rate)} vs {rate(etcd.median_rate)} ops/s; per round {spread(to_etcd)}x"
    )
    return [Target("postgres", name, measured, median(to_etcd) >= ETCD_TARGET)]


def median(values: Sequence[float]) -> float:
    return percentile(sorted(values), 50) if values else math.nan


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else yes_no(met)


def targets_table(found: Sequence[Target]) -> str:
    rows = [[t.subject, t.name, t.measured, _verdict(t.met)] for t in found]
    return markdown_table(["subject", "target", "measured", "result"], rows)


# ----- the comparison tables --------------------------------------------------------------


def single_writer_table(comparison: Comparison) -> str:
    headers = [
        "backend",
        "loop",
        "ops/s: median [min-max] of rounds",
        "p50 ms",
        "p99 ms",
        "/ physical floor, per round",
    ]
    rows = []
    for result in comparison.single:
        contender = result.contender
        floor = comparison.single_of(contender.backend, "floor")
        relative = "-" if floor is None or floor is result else spread(ratios(result, floor))
        latency = result.latency()
        rows.append(
            [
                contender.backend,
                contender.label,
                rate_spread(result.rates()),
                ms(latency.p50_ms),
                ms(latency.p99_ms),
                relative,
            ]
        )
    rows += [
        [skip.split(":", 1)[0], skip.split(":", 1)[1].strip(), "-", "-", "-", "-"]
        for skip in comparison.skipped
    ]
    return markdown_table(headers, rows)


def many_writers_table(comparison: Comparison) -> str:
    headers = [
        "backend",
        "system",
        "ok/s: median [min-max] of rounds",
        "conflicts/s",
        "exhausted calls",
        "errors",
        "expected/final/lost",
    ]
    rows = []
    for result in comparison.many:
        seconds = sum(r.seconds for r in result.rounds) or 1.0
        calls = result.total("successes") + result.total("exhausted") + result.total("errors")
        exhausted = result.total("exhausted")
        rows.append(
            [
                result.contender.backend,
                result.contender.label,
                rate_spread([r.goodput for r in result.rounds]),
                rate(result.total("conflicts") / seconds),
                f"{exhausted} ({100.0 * exhausted / calls if calls else 0.0:.1f} %)",
                str(result.total("errors")),
                f"{result.expected}/{result.final}/{result.lost}",
            ]
        )
    rows += [
        [skip.split(":", 1)[0], skip.split(":", 1)[1].strip(), "-", "-", "-", "-", "-"]
        for skip in comparison.skipped
    ]
    return markdown_table(headers, rows)


def change_feed_line(comparison: Comparison) -> str:
    plain = comparison.single_of("postgres", "floor")
    trigger = comparison.single_of("postgres", "floor + NOTIFY trigger")
    statement = comparison.single_of("postgres", "floor + NOTIFY in the statement")
    if plain is None or trigger is None or statement is None:
        return ""
    return (
        "The change feed's price on Postgres, per round against the plain floor: one NOTIFY "
        f"per write from a row trigger (as until migration 006) {spread(ratios(trigger, plain))}"
        f"; from the writing statement itself (as now) {spread(ratios(statement, plain))}. "
        "shellgate's ratio above is against the plain floor, so it pays for its change feed."
    )


def console_report(comparison: Comparison, results: Sequence[BackendResults]) -> str:
    parts = [
        "One writer, one object",
        single_writer_table(comparison),
        change_feed_line(comparison),
        f"{WRITERS} writers, one object",
        many_writers_table(comparison),
    ]
    if results:
        parts += ["16 writers in 4 processes", loads_table(results)]
    parts += ["Targets", targets_table(targets(comparison, results))]
    return "\n\n".join(part for part in parts if part)


# ----- the document -----------------------------------------------------------------------

BEGIN_MARKER = "<!-- bench.store_cas:begin -->"
END_MARKER = "<!-- bench.store_cas:end -->"
SHARED_HEADER = """# Benchmarks

Each section below is generated by the command it names and rewritten only between its
own markers (`<!-- bench.<name>:begin -->` ... `<!-- bench.<name>:end -->`); nothing inside
a section is edited by hand. `make bench` reruns them.
"""


def write_section(path: Path, section: str) -> None:
    """Put ``section`` between this benchmark's markers in ``path``, leaving the rest as it is.

    A missing file gets the shared header first; a file without the markers gets them
    appended at its end.
    """
    block = f"{BEGIN_MARKER}\n{section.strip()}\n{END_MARKER}"
    text = path.read_text() if path.exists() else SHARED_HEADER
    begin, end = text.find(BEGIN_MARKER), text.find(END_MARKER)
    if begin != -1 and end > begin:
        text = text[:begin] + block + text[end + len(END_MARKER) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def document(
    comparison: Comparison,
    results: Sequence[BackendResults],
    facts: MachineFacts,
    timing: Timing,
    image: str | None,
    command: str,
) -> str:
    """The section of docs/benchmarks.md this benchmark owns (without its markers)."""
    sections = [
        _header(facts, timing, command),
        "### Targets\n\n" + targets_table(targets(comparison, results)),
        _machine(comparison, results, facts),
        _single_writer_section(comparison),
        _many_writers_section(comparison),
    ]
    if results:
        sections += [_loads_section(results), _sweep_section(results, image)]
    sections.append(_method(comparison, results, timing))
    return "\n\n".join(sections) + "\n"


def _header(facts: MachineFacts, timing: Timing, command: str) -> str:
    quick = " (**quick run**: too short to compare against)" if timing.duration < 3 else ""
    return (
        "## Store: compare-and-swap updates\n\n"
        f"> Generated by `{command}` on {facts.date}{quick}. Do not edit by hand: rerun the "
        "command (`make bench`) to refresh every figure, table and the plot. The code is in "
        "`bench/` (entry point `bench/store_cas.py`).\n\n"
        "What it measures: `Store.update_message_cas` (read, decode, mutate, encode, "
        "CAS-write, retry on conflict) side by side with the physical floor of each database "
        "(the same loop, as short as its driver allows) and with the peers a team would "
        "otherwise use (SQLAlchemy's versioned ORM rows, etcd's transactions), with one "
        f"writer and with {WRITERS} on one object; then how the store behaves when many "
        "writers in several processes share one object."
    )


def _machine(comparison: Comparison, results: Sequence[BackendResults], facts: MachineFacts) -> str:
    packages = ", ".join(f"{name} {version}" for name, version in facts.packages.items())
    loads = sorted(comparison.load_samples)
    during = f"{loads[0]:.2f} / {median(loads):.2f} / {loads[-1]:.2f}" if loads else "not sampled"
    lines = [
        f"- CPU: {facts.cores} cores ({facts.cpu}); kernel {facts.kernel}",
        f"- Python {facts.python}; {packages}",
        f"- SQLite {facts.sqlite_library} (the library Python links)",
    ]
    for r in results:
        if r.backend == "postgres":
            lines.append(f"- PostgreSQL {r.engine_version}")
    lines += [
        f"- Database files in `{facts.temp_dir}` ({facts.temp_filesystem}), a fresh temporary "
        "directory per run",
        f"- **Load** (1-minute load average): {facts.load_at_start.split(' / ')[0]} at the "
        f"start, {during} (min / median / max) sampled at each round of the comparison, "
        f"{facts.load_at_end.split(' / ')[0] if facts.load_at_end else '-'} at the end, on "
        f"{facts.cores} cores. The machine is shared: anything else running competes for "
        "the same cores and disk, which is why every figure is per round and interleaved",
        _code_line(facts),
    ]
    for r in results:
        settings = ", ".join(f"{k}={v}" for k, v in r.settings.items())
        lines.append(f"- {r.backend} settings in force (read back): {settings}")
    return "### Machine, settings and load\n\n" + "\n".join(lines)


def _single_writer_section(comparison: Comparison) -> str:
    feed = change_feed_line(comparison)
    return (
        "### One writer, one object: the floors, shellgate and the peers\n\n"
        f"{comparison.rounds} interleaved rounds of {comparison.round_s:g} s per loop; the "
        "last column is the loop's rate over its backend's physical floor in the same round "
        "(median [min-max] over the rounds).\n\n"
        + single_writer_table(comparison)
        + (f"\n\n{feed}" if feed else "")
    )


def _many_writers_section(comparison: Comparison) -> str:
    return (
        f"### {WRITERS} writers on one object\n\n"
        f"{WRITERS} tasks in one process calling back to back on one shared object, "
        f"{len(comparison.many[0].rounds) if comparison.many else 0} interleaved rounds of "
        f"{comparison.round_s:g} s per system. *conflicts/s*: attempts that lost their "
        "compare-and-swap; *exhausted*: calls that lost all their attempts; "
        "*expected/final/lost*: successful calls, the counter's increase read back, and the "
        "difference.\n\n" + many_writers_table(comparison)
    )


def _code_line(facts: MachineFacts) -> str:
    code = facts.code
    line = f"- Code: commit `{code.commit}` (sources digest `{code.digest}`)"
    if code.modified:
        line += ", with uncommitted changes in " + ", ".join(f"`{p}`" for p in code.modified)
    if facts.changed_during_run:
        changed = ", ".join(f"`{p}`" for p in facts.changed_during_run)
        line += (
            f". Changed on disk while the run was going on: {changed}; every process had "
            "imported the code at the start, so the figures are for the code as it was then"
        )
    return line


def _loads_section(results: Sequence[BackendResults]) -> str:
    return (
        "### (c), (d), (e): 16 writers in 4 processes\n\n"
        "(c) each writer at a steady 20 updates/s on one shared object (320/s offered); "
        "(d) the same writers on the same object as fast as they can; (e) as fast as they "
        "can, each writer on its own object. Each process has its own store, as gateway "
        "replicas would. *conflicts/s* counts attempts that lost the CAS; *exhausted* calls "
        "raised `Conflict` after all their attempts; *errors* are any other store error; "
        "*expected/final/lost*: successful calls over the whole run, the counter read back at "
        "the end, and the difference.\n\n" + loads_table(results)
    )


def _sweep_section(results: Sequence[BackendResults], image: str | None) -> str:
    plot = f"![goodput and p99 latency against writers]({image})\n\n" if image else ""
    return (
        "### Scaling: the steady load with 1 to 16 writers\n\n"
        f"Each writer at {STEADY_RATE:g} updates/s on one shared object, writers spread over "
        f"up to {MAX_PROCESSES} processes. The dashed line is the offered load.\n\n"
        + plot
        + sweep_table(results)
    )


def _method(comparison: Comparison, results: Sequence[BackendResults], timing: Timing) -> str:
    retry = results[0].retry if results else RetryPolicy()
    payload = len(bench_sandbox().SerializeToString(deterministic=True))
    return f"""### How it was measured

- **Object and mutation.** A sandbox of {payload} bytes encoded (template image, labels,
  environment, command). Every update, in every loop, reads it, decodes it, increments
  `status.current_policy_version`, encodes it deterministically and writes it only if the
  version read is still current.
- **Interleaving.** The one-writer loops run in {comparison.rounds} rounds of
  {comparison.round_s:g} s, after one warm-up each, in the order floor, shellgate, peers
  rotated by one every round, so a burst of other work on the machine hits each loop in
  some round and no loop always follows the same neighbour. Rates are medians of the
  rounds; ratios are taken round by round and shown as median [min-max].
- **Physical floors.** SQLite: stdlib `sqlite3`, one connection called synchronously (no
  thread, no event-loop turn), autocommit, WAL, `synchronous=FULL`: `SELECT payload,
  resource_version`, decode, increment, encode, `UPDATE ... WHERE id = ? AND
  resource_version = ? RETURNING resource_version`. Postgres: one `asyncpg` connection, both
  statements prepared once, on a plain table without any change feed; the same loop on a
  table with the NOTIFY row trigger shellgate had until migration 006, and with
  `pg_notify` in the writing statement (what shellgate does now), prices the change feed.
- **shellgate.** `store.update_message_cas(Sandbox, id, increment)` with the defaults a
  gateway runs with: SQLite WAL + `synchronous=FULL`; Postgres with fsync and
  synchronous_commit on (read back above), its pool and its change feed (`pg_notify` in the
  writing statement), so its ratio to the plain floor includes the change feed's price.
- **Peers.** SQLAlchemy 2 ORM, a mapped class with `version_id_col`, an `AsyncSession` per
  call (`session.get`, change the payload, commit; `StaleDataError` is a lost race), async
  engine on aiosqlite (WAL + `synchronous=FULL` set on connect) and on asyncpg, default
  pool. etcd: a single member in a temporary directory, default durability, the `aetcd`
  gRPC client: `get`, then `txn(compare mod_revision == read, success put)`.
- **Retry rule, everywhere.** {retry.attempts} attempts, each re-reading and re-applying,
  full-jitter pauses under a ceiling of {retry.base_delay * 1000:g} ms doubling up to
  {retry.max_delay * 1000:g} ms; a call that loses all its attempts is *exhausted*.
- **{WRITERS} writers.** {WRITERS} asyncio tasks in one process share one object per
  system, each calling back to back; calls started inside a round count, and the counter
  read back at the end must equal the successful calls.
- **Multi-process loads.** (c) to (e) and the sweep run {timing.warmup:g} s of warm-up and
  {timing.duration:g} s measured each, in up to {MAX_PROCESSES} spawned processes with one
  store each (the open-loop schedule: a late writer drops its missed slots instead of
  bursting). Percentiles are nearest-rank over the raw samples.
- **Where the time goes.** `python -m bench.profile_cas --backend postgres` (or `sqlite`)
  runs the store's loop and the floor under cProfile and prints, per operation, the time
  spent waiting for the database, the Python time, and the costliest functions."""


# ----- the plot ---------------------------------------------------------------------------


def plot_scaling(results: Sequence[BackendResults], path: Path) -> None:
    """Goodput and p99 latency against writers, one line per backend (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (goodput_ax, p99_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for r in results:
        writers = [load.spec.writers for load in r.sweep]
        goodput_ax.plot(writers, [load.goodput for load in r.sweep], marker="o", label=r.backend)
        p99_ax.plot(writers, [load.latency.p99_ms for load in r.sweep], marker="o", label=r.backend)
    if results:
        writers = [load.spec.writers for load in results[0].sweep]
        offered = [w * STEADY_RATE for w in writers]
        goodput_ax.plot(writers, offered, linestyle="--", color="gray", label="offered")
    for ax, title, unit in (
        (goodput_ax, "Goodput (successful updates/s)", "updates/s"),
        (p99_ax, "p99 call latency (log scale)", "ms"),
    ):
        ax.set_xscale("log", base=2)
        if ax is p99_ax:
            ax.set_yscale("log")
        ax.set_xticks([1, 2, 4, 8, 16], labels=["1", "2", "4", "8", "16"])
        ax.set_xlabel(f"writers on one object ({STEADY_RATE:g} updates/s each)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
