"""The tables, plots and document section of ``bench.scale``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.machine import MachineFacts
from bench.report import markdown_table
from bench.scale_attach import CLIENTS, AttachScale
from bench.scale_local import LocalScale
from bench.scale_soak import MIX, SoakScale
from bench.scale_startup import StartupScale, startup_lines
from bench.scale_store import StoreScale
from bench.scale_watch import WatchScale
from bench.stats import Latency

BEGIN = "<!-- bench.scale:begin -->"
END = "<!-- bench.scale:end -->"
LIST_IMAGE = "img/scale_lists.png"
WATCH_IMAGE = "img/scale_watch.png"
SOAK_IMAGE = "img/scale_soak.png"


@dataclass
class Results:
    store: list[StoreScale] = field(default_factory=list)
    watch: list[WatchScale] = field(default_factory=list)
    label: str = ""
    attach: list[AttachScale] = field(default_factory=list)
    local: list[LocalScale] = field(default_factory=list)
    startup: list[StartupScale] = field(default_factory=list)
    soak: list[SoakScale] = field(default_factory=list)


def replace_section(document: str, section: str) -> str:
    """``document`` with the text between the markers replaced by ``section`` (the markers
    appended at the end when absent); everything else is kept byte for byte."""
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    if BEGIN in document and END in document.split(BEGIN, 1)[1]:
        before, rest = document.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        return before + block + after
    separator = (
        ""
        if not document or document.endswith("\n\n")
        else ("\n" if document.endswith("\n") else "\n\n")
    )
    return document + separator + block + "\n"


def _ms(latency: Latency) -> str:
    return f"{latency.p50_ms:.2f} / {latency.p99_ms:.2f}"


def _p50(latency: Latency) -> str:
    return f"{latency.p50_ms:.2f}"


def store_table(rows: Sequence[StoreScale]) -> str:
    return markdown_table(
        [
            "backend",
            "rows",
            "creates/s (16 creators)",
            "get p50 / p99 ms",
            "first page p50 ms (all workspaces)",
            "first page p50 ms (one workspace)",
            "page p50 / p99 ms (full pass)",
            "full pass s",
            "status count p50 ms",
        ],
        [
            [
                r.backend,
                f"{r.rows:,}",
                f"{r.creates_per_s:,.0f}",
                _ms(r.get),
                _p50(r.list_first),
                _p50(r.list_workspace),
                _ms(r.page),
                f"{r.full_pass_s:.2f}",
                _p50(r.count),
            ]
            for r in rows
        ],
    )


def selector_table(rows: Sequence[StoreScale]) -> str:
    labels = list(rows[0].selectors) if rows else []
    return markdown_table(
        ["backend", "rows", *[f"`{label}` p50 ms" for label in labels]],
        [[r.backend, f"{r.rows:,}", *[_p50(r.selectors[k]) for k in labels]] for r in rows],
    )


def watch_table(rows: Sequence[WatchScale]) -> str:
    return markdown_table(
        [
            "backend",
            "streams",
            "writes",
            "delivered",
            "delivery p50 / p99 ms",
            "gateway CPU ms per write",
            "gateway CPU idle %",
            "streams opened (in s)",
        ],
        [
            [
                r.backend,
                f"{r.streams:,}",
                str(r.writes),
                str(r.delivered),
                _ms(r.delivery) if r.streams else "-",
                f"{r.cpu_ms_per_write:.2f}",
                f"{r.idle_cpu_percent:.1f}",
                f"{r.opened:,} ({r.open_seconds:.1f})",
            ]
            for r in rows
        ],
    )


def attach_table(rows: Sequence[AttachScale]) -> str:
    return markdown_table(
        ["backend", "providers", "attaches", "ABORTED", "attach p50 / p99 ms"],
        [
            [
                r.backend,
                f"one shared by {CLIENTS} clients" if r.shared else f"{CLIENTS}, one per client",
                str(r.attaches),
                str(r.aborted),
                _ms(r.latency),
            ]
            for r in rows
        ],
    )


def local_table(rows: Sequence[LocalScale]) -> str:
    return markdown_table(
        [
            "idle sandboxes",
            "idle command",
            "creates/s",
            "gateway CPU ms per create",
            "child CPU ms to start",
            "RSS per idle child MB",
            "gateway threads",
        ],
        [
            [
                str(r.sandboxes),
                f"`{r.idle_command}`",
                f"{r.creates_per_s:.0f}",
                f"{r.cpu_ms_per_create:.2f}",
                f"{r.child_cpu_ms:.1f}",
                f"{r.child_rss_mb:.1f}",
                str(r.threads),
            ]
            for r in rows
        ],
    )


def soak_table(rows: Sequence[SoakScale]) -> str:
    return markdown_table(
        [
            "backend",
            "minutes",
            "ops (errors, skipped)",
            "gateway CPU %",
            "RSS start / end / max MB",
            "RSS slope, 2nd half, MB/min",
            "open fds start / end",
            "threads start / end",
        ],
        [
            [
                r.backend,
                f"{r.minutes:g}",
                f"{r.ops:,} ({r.errors}, {r.skipped})",
                f"{r.cpu_percent:.0f}",
                f"{r.rss_start_mb:.1f} / {r.rss_end_mb:.1f} / {r.rss_max_mb:.1f}",
                f"{r.slope_mb_per_min:+.2f}",
                f"{r.fds_start} / {r.fds_end}",
                f"{r.threads_start} / {r.threads_end}",
            ]
            for r in rows
        ],
    )


def _soak_part(rows: Sequence[SoakScale]) -> list[str]:
    mix = ", ".join(f"{kind} {weight}" for kind, weight in MIX.items())
    errors = "; ".join(
        f"{r.backend}: " + ", ".join(f"{k} {v}" for k, v in sorted(r.error_kinds.items()))
        for r in rows
        if r.error_kinds
    )
    return [
        "",
        f"Soak: a `shellgate serve` process (local driver, its own fresh database) under a "
        f"mixed gRPC load at {rows[0].rate:g} calls/s, open loop, with this weight per "
        f"operation: {mix} (creates and deletes keep 10-40 sandboxes alive; the updates go "
        "through CAS: a sandbox setting, a provider update, a provider attached and "
        "detached; a watch opens a WatchSandbox stream, reads its first message and closes "
        "it; exec runs `true`). RSS, open fds and threads of the gateway are read from "
        "/proc every few seconds; the slope is a least-squares line through the second "
        "half. A skipped call is one due while 64 were still open.",
        "",
        soak_table(rows),
        *(["", f"Errors by operation and code: {errors}."] if errors else []),
        "",
        f"![gateway RSS during the soak]({SOAK_IMAGE})",
    ]


def plot_soak(rows: Sequence[SoakScale], folder: Path) -> None:
    """RSS (and open fds) of the gateway against time, one line per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for r in rows:
        minutes = [s[0] / 60 for s in r.samples]
        axes[0].plot(minutes, [s[1] for s in r.samples], label=r.backend)
        axes[1].plot(minutes, [s[2] for s in r.samples], label=r.backend)
    for ax, title, unit in zip(
        axes, ("Gateway RSS", "Gateway open fds"), ("MB", "fds"), strict=True
    ):
        ax.set_xlabel("minutes of mixed load")
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / Path(SOAK_IMAGE).name)
    plt.close(fig)


def _plans(rows: Sequence[StoreScale]) -> str:
    parts = []
    for backend in sorted({r.backend for r in rows}):
        largest = max((r for r in rows if r.backend == backend), key=lambda r: r.rows)
        for label, plan in largest.plans.items():
            parts.append(f"{backend}, {largest.rows:,} rows, {label}:\n\n```\n{plan}\n```")
    return "\n\n".join(parts)


def _store_part(rows: Sequence[StoreScale]) -> list[str]:
    return [
        "Store calls through the `Store` API, one table grown to each size (sandboxes over 4 "
        "workspaces, `team=t<i mod 100>`; Postgres analysed after each growth, as autovacuum "
        "would). A page is 100 rows; the full pass pages every sandbox of every workspace as "
        "the resync does.",
        "",
        store_table(rows),
        "",
        "Label selectors (first page of 100, across workspaces):",
        "",
        selector_table(rows),
    ]


def render_section(
    results: Results,
    baseline: Results | None,
    facts: MachineFacts,
    command: str,
    merged: Sequence[tuple[str, str]] = (),
) -> str:
    """The section; ``merged`` names the saved runs (file, label) whose parts were joined."""
    joined = "".join(
        f" The rows of `{path}` ({label}), a separate run, are joined to its tables."
        for path, label in merged
    )
    lines = [
        "## Scale: sandboxes and watchers",
        "",
        f"> Generated by `{command}` on {facts.date} ({results.label}). Rewritten by "
        "`bench.scale` between its markers; the rest of this file is `bench.store_cas`'s. "
        f"Load average (1/5/15 min) at the start {facts.load_at_start}, at the end "
        f"{facts.load_at_end or '-'} on {facts.cores} cores: the machine is shared, so "
        "absolute figures are noisy; the shapes (flat or growing with rows and streams) are "
        f"the result.{joined}",
        "",
    ]
    if results.store:
        lines += _store_part(results.store)
    if results.watch:
        lines += [
            "",
            "WatchSandbox fan-out on one gateway process, each stream on its own sandbox, "
            "writes at a steady rate to random watched sandboxes. Delivery is from just before "
            "the write to the stream handing over the new version. Postgres: the writes are "
            "made by another process (as another replica makes them), so at 100 streams "
            "delivery is the cross-replica propagation time. SQLite: one process owns the "
            "file, so a client calls AttachSandboxProvider / DetachSandboxProvider on the "
            "watched sandbox and the gateway's in-process change feed delivers the write; its "
            "CPU per write includes those RPCs, and the 0-stream row is the same writes with "
            "nothing watching.",
            "",
            watch_table(results.watch),
        ]
    if results.attach:
        lines += [
            "",
            f"AttachSandboxProvider contention: {CLIENTS} clients, each attaching a provider to "
            "its own sandbox and detaching it again in a loop, through the repositories as the "
            "handler calls them; ABORTED is a call that ran out of CAS attempts.",
            "",
            attach_table(results.attach),
        ]
    if results.local:
        lines += [
            "",
            "Local driver: sandboxes created without a command (each runs the idle command) "
            "by one driver, one after another.",
            "",
            local_table(results.local),
        ]
    lines += startup_lines(results.startup)
    if results.soak:
        lines += _soak_part(results.soak)
    lines += ["", f"![list latency against rows]({LIST_IMAGE})"]
    if results.watch:
        lines += ["", f"![watch delivery against streams]({WATCH_IMAGE})"]
    if baseline is not None:
        lines += [
            "",
            f"### Before: the same benchmark on {baseline.label or 'the baseline'}",
            "",
        ]
        if baseline.store:
            lines += ["", store_table(baseline.store), "", selector_table(baseline.store)]
        if baseline.watch:
            lines += ["", watch_table(baseline.watch)]
        if baseline.attach:
            lines += ["", attach_table(baseline.attach)]
        if baseline.local:
            lines += ["", local_table(baseline.local)]
        lines += startup_lines(baseline.startup)
        if baseline.soak:
            lines += ["", soak_table(baseline.soak)]
    if results.store:
        lines += ["", "### Plans the databases chose (largest size)", "", _plans(results.store)]
    return "\n".join(lines) + "\n"


def plot(results: Results, baseline: Results | None, folder: Path) -> None:
    """List latency against rows, and watch delivery p99 against streams (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    if results.soak:
        plot_soak(results.soak, folder)
    runs = [("", results)] + ([("before: ", baseline)] if baseline is not None else [])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for prefix, run in runs:
        style = "--" if prefix else "-"
        for backend in sorted({r.backend for r in run.store}):
            rows = [r for r in run.store if r.backend == backend]
            sizes = [r.rows for r in rows]
            axes[0].plot(
                sizes,
                [r.page.p99_ms for r in rows],
                style,
                marker="o",
                label=f"{prefix}{backend} page p99",
            )
            axes[1].plot(
                sizes,
                [r.selectors["team=nomatch"].p50_ms for r in rows],
                style,
                marker="o",
                label=f"{prefix}{backend} team=nomatch p50",
            )
    for ax, title in zip(axes, ("Full pass: page p99", "Selector matching nothing"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows")
        ax.set_ylabel("ms")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / Path(LIST_IMAGE).name)
    plt.close(fig)
    if not results.watch:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for prefix, run in runs:
        if not run.watch:
            continue
        style = "--" if prefix else "-"
        for backend in sorted({w.backend for w in run.watch}):
            rows = [w for w in run.watch if w.backend == backend and w.streams > 0]
            streams = [w.streams for w in rows]
            axes[0].plot(
                streams,
                [w.delivery.p99_ms for w in rows],
                style,
                marker="o",
                label=f"{prefix}{backend} delivery p99",
            )
            axes[1].plot(
                streams,
                [w.cpu_ms_per_write for w in rows],
                style,
                marker="o",
                label=f"{prefix}{backend} CPU per write",
            )
    for ax, title, unit in zip(
        axes, ("Watch delivery p99", "Gateway CPU per write"), ("ms", "ms CPU"), strict=True
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("WatchSandbox streams on one replica")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / Path(WATCH_IMAGE).name)
    plt.close(fig)
