"""Turn results into the console table, docs/benchmarks.md and the scaling plot.

The document is generated in full by every run; nothing in it is edited by hand. Tables are
pipe tables padded to line up, so the same text reads well in a terminal and renders as
Markdown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.loads import MAX_PROCESSES, STEADY_RATE
from bench.machine import MachineFacts
from bench.objects import bench_sandbox
from bench.stats import LoadResult, percentile
from bench.suite import BackendResults, single_writer_rounds, single_writer_seconds
from bench.workloads import Timing
from shellgate.store import RetryPolicy

RATIO_TARGET = 0.85
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


def single_writer_table(results: Sequence[BackendResults]) -> str:
    headers = [
        "backend",
        "(a) store ops/s",
        "p50 ms",
        "p99 ms",
        "(b) driver ops/s",
        "p50 ms",
        "p99 ms",
        "(a)/(b)",
        "per round: median [min-max]",
    ]
    rows = [
        [
            r.backend,
            rate(r.store.ops_per_s),
            ms(r.store.latency.p50_ms),
            ms(r.store.latency.p99_ms),
            rate(r.floor.ops_per_s),
            ms(r.floor.latency.p50_ms),
            ms(r.floor.latency.p99_ms),
            f"{r.ratio:.2f}",
            _spread(r.round_ratios),
        ]
        for r in results
    ]
    return markdown_table(headers, rows)


def _spread(ratios: Sequence[float]) -> str:
    if not ratios:
        return "-"
    ordered = sorted(ratios)
    return f"{percentile(ordered, 50):.2f} [{ordered[0]:.2f}-{ordered[-1]:.2f}]"


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
    backend: str
    name: str
    measured: str
    met: bool


def targets(results: Sequence[BackendResults]) -> list[Target]:
    found = []
    for r in results:
        steady = r.loads["c"]
        found += [
            Target(
                r.backend, f"(a)/(b) >= {RATIO_TARGET}", f"{r.ratio:.3f}", r.ratio >= RATIO_TARGET
            ),
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


def targets_table(found: Sequence[Target]) -> str:
    rows = [[t.backend, t.name, t.measured, yes_no(t.met)] for t in found]
    return markdown_table(["backend", "target", "measured", "result"], rows)


def console_report(results: Sequence[BackendResults]) -> str:
    return "\n\n".join(
        [
            "Single writer, one object: (a) update_message_cas, (b) the driver floor",
            single_writer_table(results),
            "16 writers in 4 processes",
            loads_table(results),
            "Steady sweep (20 updates/s per writer, one object)",
            sweep_table(results),
            "Targets",
            targets_table(targets(results)),
        ]
    )


# ----- the document -----------------------------------------------------------------------


def document(
    results: Sequence[BackendResults],
    facts: MachineFacts,
    timing: Timing,
    image: str,
    command: str,
) -> str:
    """docs/benchmarks.md; ``image`` is the plot's path relative to the document."""
    sections = [
        _header(facts, timing, command),
        _machine(results, facts),
        "## Targets\n\n" + targets_table(targets(results)),
        _single_writer_section(results),
        _loads_section(results),
        _sweep_section(results, image),
        _method(results, timing),
    ]
    return "\n\n".join(sections) + "\n"


def _header(facts: MachineFacts, timing: Timing, command: str) -> str:
    quick = " (**quick run**: too short to compare against)" if timing.duration < 3 else ""
    return (
        "# Store benchmark: compare-and-swap updates\n\n"
        f"> Generated by `{command}` on {facts.date}{quick}. Do not edit by hand: rerun the "
        "command (`make bench`) to refresh every figure, table and the plot. The code is in "
        "`bench/` (entry point `bench/store_cas.py`).\n\n"
        "What it measures: the cost of `Store.update_message_cas` (read, decode, mutate, "
        "encode, CAS-write, retry on conflict) against the same loop written directly on the "
        "driver, and how it behaves when many writers in several processes share one object."
    )


def _machine(results: Sequence[BackendResults], facts: MachineFacts) -> str:
    engines = {r.backend: r.engine_version for r in results}
    packages = ", ".join(f"{name} {version}" for name, version in facts.packages.items())
    lines = [
        f"- CPU: {facts.cores} cores ({facts.cpu}); kernel {facts.kernel}",
        f"- Python {facts.python}; {packages}",
        f"- SQLite {engines.get('sqlite', facts.sqlite_library)} (the library Python links)",
    ]
    if "postgres" in engines:
        lines.append(f"- PostgreSQL {engines['postgres']}")
    lines.append(
        f"- Database files in `{facts.temp_dir}` ({facts.temp_filesystem}), a fresh temporary "
        "directory per run"
    )
    lines.append(
        f"- Load average (1/5/15 min) at the start {facts.load_at_start}, at the end "
        f"{facts.load_at_end or '-'}: the machine is shared, and anything else running "
        "competes with the benchmark for the same cores"
    )
    lines.append(_code_line(facts))
    for r in results:
        settings = ", ".join(f"{k}={v}" for k, v in r.settings.items())
        lines.append(f"- {r.backend} settings in force (read back): {settings}")
    return "## Machine and settings\n\n" + "\n".join(lines)


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


def _single_writer_section(results: Sequence[BackendResults]) -> str:
    return (
        "## (a) and (b): one writer, one object\n\n"
        "(a) `update_message_cas` through the store; (b) the same read-then-CAS written "
        "directly on the driver (the floor). Closed loop: the next call starts when the "
        "previous one returned.\n\n" + single_writer_table(results)
    )


def _loads_section(results: Sequence[BackendResults]) -> str:
    return (
        "## (c), (d), (e): 16 writers in 4 processes\n\n"
        "(c) each writer at a steady 20 updates/s on one shared object (320/s offered); "
        "(d) the same writers on the same object as fast as they can; (e) as fast as they "
        "can, each writer on its own object. *conflicts/s* counts attempts that lost the CAS; "
        "*exhausted* calls raised `Conflict` after all their attempts; *errors* are any other "
        "store error; *expected/final/lost*: successful calls over the whole run, the counter "
        "read back at the end, and the difference.\n\n" + loads_table(results)
    )


def _sweep_section(results: Sequence[BackendResults], image: str) -> str:
    return (
        "## Scaling: the steady load with 1 to 16 writers\n\n"
        f"Each writer at {STEADY_RATE:g} updates/s on one shared object, writers spread over "
        f"up to {MAX_PROCESSES} processes. The dashed line is the offered load.\n\n"
        f"![goodput and p99 latency against writers]({image})\n\n" + sweep_table(results)
    )


def _method(results: Sequence[BackendResults], timing: Timing) -> str:
    retry = results[0].retry if results else RetryPolicy()
    rounds = single_writer_rounds(timing)
    payload = len(bench_sandbox().SerializeToString(deterministic=True))
    return f"""## How it was measured

- **Durations.** Every load runs {timing.warmup:g} s of warm-up, then {timing.duration:g} s
  measured. (a) and (b) warm up once each, then alternate in {rounds} rounds of
  {single_writer_seconds(timing) / rounds:g} s ({single_writer_seconds(timing):g} s each in
  all: b, a, b, a, ...) on two fresh objects and pool their samples, so drift and other load
  on the machine hit both alike. The target is judged on the pooled ratio; the median and
  range of the {rounds} per-round ratios show how much one short measurement can move.
- **Object.** A sandbox of {payload} bytes encoded (template image, labels, environment,
  command). Every update increments `status.current_policy_version` by one.
- **SQLite.** A real file in a fresh temporary directory, the store's defaults: WAL,
  `synchronous=FULL`, `busy_timeout=5000`, one connection per process (aiosqlite).
- **Postgres.** Unless `SHELLGATE_BENCH_DATABASE_URL` names a database, a throwaway
  server started by the benchmark (`initdb` + `pg_ctl` as the `postgres` user, temporary
  directory, free port, TCP on 127.0.0.1) with durable settings: the PostgreSQL defaults,
  read back above. The store's pool is asyncpg 1..10 connections per process.
- **The floor (b).** One aiosqlite connection with the store's PRAGMAs, or one asyncpg
  pool of the store's size with one acquire per read-then-CAS. It runs
  `SELECT payload, resource_version ... WHERE id = ?`, decodes, increments, encodes and
  `UPDATE objects SET payload = ?, resource_version = resource_version + 1 WHERE id = ? AND
  resource_version = ? RETURNING resource_version`. The store's statement additionally
  writes `labels`, `status` and `updated_at_ms` and matches on `object_type`; the store
  also reads every column, checks the immutable metadata, copies the message twice and
  reports to its observer. Both write the same `objects` table, so on Postgres the
  change-feed trigger (one NOTIFY per written row) fires for both. That difference is what
  (a)/(b) prices.
- **Writers.** (c) to (e) and the sweep run in {MAX_PROCESSES} spawned processes (fewer
  when there are fewer writers), each with one store, as gateway replicas would; writers are
  asyncio tasks, dealt round-robin to the processes. Each calls `update_message_cas` with
  the store's default retry policy, read once at the start of the run and handed to every
  process: {retry.attempts} attempts, full-jitter pauses under a ceiling of
  {retry.base_delay * 1000:g} ms doubling up to {retry.max_delay * 1000:g} ms.
- **Open-loop schedule.** A steady writer owns slots `phase + k / {STEADY_RATE:g} s`, with
  its phase drawn uniformly (seeded) within one interval. A call starts at its slot; a
  call that overran makes the next start at once for the most recent passed slot, and the
  older passed slots are dropped and counted as *missed*: a late writer never bursts to
  catch up, never runs two calls at once and never exceeds {STEADY_RATE:g}/s.
- **What is counted.** Calls that start inside the measured window are counted, whatever
  their outcome; latency is per call (all attempts and pauses included) from the moment it
  started, for every call including exhausted ones. Conflicts are counted per attempt by a
  store observer. The lost-update check counts every successful call of the run, warm-up
  included, and compares with the counter read back after all writers stopped.
- **Percentiles** are nearest-rank over the raw samples. A steady writer makes
  {STEADY_RATE * timing.duration:g} calls per measurement, so with one writer p99 is the
  second slowest call: one stall of the machine shows up there.
- **Where the time goes.** `python -m bench.profile_cas --backend postgres` (or `sqlite`)
  runs (a) and (b) under cProfile and prints, per operation, the time spent waiting for the
  database, the Python time, and the costliest functions with their calls per operation."""


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
