"""``python -m bench.scale``: how the gateway's costs grow with sandboxes and watchers.

Per backend, grows one table to each ``--sizes`` (default 1,000 and 10,000 rows; add 100000
when there is time: filling 100k rows takes minutes) and measures creates, gets, list pages
(first page, one workspace, every page of a full pass across workspaces), label selectors,
the status count behind ``/metrics``, and the plans the database chose. Then WatchSandbox
fan-out on one gateway process at each ``--streams`` (default 100, 1,000, 5,000) with
``--rate`` writes/s: on Postgres made by another process (at 100 streams: the cross-replica
propagation), on SQLite through the gateway's own RPCs (bench/scale_watch.py says why);
delivery p50/p99 and the gateway's CPU per write. Then a soak: a ``shellgate serve`` process
under a mixed load for ``--soak-minutes`` (bench/scale_soak.py): its RSS, fds and threads.

Writes the part of docs/benchmarks.md between ``<!-- bench.scale:begin -->`` and
``<!-- bench.scale:end -->`` (appended when absent; the rest of the file, which
``bench.store_cas`` writes, is kept) and docs/img/scale_lists.png, scale_watch.png and
scale_soak.png.
``--save FILE`` keeps the results as JSON; ``--baseline FILE`` shows such a file (a run of
older code) beside this run's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import machine
from bench.scale_attach import AttachScale, run_attaches
from bench.scale_local import LocalScale, run_local
from bench.scale_report import Results, plot, render_section, replace_section
from bench.scale_soak import SoakScale, run_soak
from bench.scale_startup import StartupScale, run_startup
from bench.scale_store import UNAVAILABLE_RETRIES, StoreScale, fill, measure
from bench.scale_watch import (
    RpcWriter,
    WatchScale,
    gateway_process,
    run_fanout,
    store_writer,
    watched_sandboxes,
)
from bench.stats import Latency
from bench.suite import BACKENDS, database_url
from shellgate.store import connect

DEFAULT_OUTPUT = "docs/benchmarks.md"


def _numbers(text: str) -> list[int]:
    """Comma-separated positive numbers, sorted; an empty text skips that part."""
    if not text.strip():
        return []
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a comma-separated list of numbers, got {text!r}"
        ) from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"positive numbers, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--sizes", type=_numbers, default=[1000, 10000])
    parser.add_argument("--streams", type=_numbers, default=[100, 1000, 5000])
    parser.add_argument("--rate", type=float, default=50.0, help="writes/s during fan-out")
    parser.add_argument("--seconds", type=float, default=10.0, help="fan-out write phase")
    parser.add_argument(
        "--attach-seconds", type=float, default=5.0, help="attach contention, per case"
    )
    parser.add_argument(
        "--local-sandboxes", type=int, default=100, help="idle local-driver sandboxes (0: skip)"
    )
    parser.add_argument(
        "--startup-sizes", type=_numbers, default=[1000, 10000], help="'' skips startup"
    )
    parser.add_argument(
        "--soak-minutes", type=float, default=10.0, help="mixed load on a gateway (0: skip)"
    )
    parser.add_argument("--soak-rate", type=float, default=100.0, help="calls/s during the soak")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="'' writes no document")
    parser.add_argument("--save", default="", help="also write the results as JSON here")
    parser.add_argument("--baseline", default="", help="JSON of an earlier run to compare")
    parser.add_argument(
        "--merge",
        action="append",
        default=[],
        help="JSON (--save) of another run of the same code, whose parts join this run's "
        "tables (e.g. the soak, run apart); repeatable",
    )
    parser.add_argument("--label", default="", help="names the code measured (default: commit)")
    return parser.parse_args(argv)


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def run_store(url: str, sizes: Sequence[int]) -> list[StoreScale]:
    store = await connect(url)
    results = []
    ids: list[str] = []
    try:
        for size in sizes:
            new_ids, rate = await fill(store, len(ids), size)
            ids += new_ids
            if store.backend == "postgres":  # as autovacuum would after such growth
                await store._execute("ANALYZE objects")  # type: ignore[attr-defined]
            results.append(await measure(store, ids, rate))
            progress(f"{store.backend} {size} rows: {results[-1].page.p99_ms:.1f} ms page p99")
            if UNAVAILABLE_RETRIES:
                progress(f"  creates retried after UNAVAILABLE so far: {len(UNAVAILABLE_RETRIES)}")
    finally:
        await store.close()
    return results


async def run_attach(url: str, seconds: float) -> list[AttachScale]:
    store = await connect(url)
    try:
        found = []
        for shared in (True, False):
            found.append(await run_attaches(store, shared=shared, seconds=seconds))
            progress(f"{store.backend} attaches, shared={shared}: {found[-1].latency}")
        return found
    finally:
        await store.close()


async def run_watch(
    url: str, streams: Sequence[int], rate: float, seconds: float
) -> list[WatchScale]:
    """Fan-out at each stream count. Postgres: written by this process's store (another
    replica); SQLite: written through the gateway's RPCs, first with nothing watching."""
    store = await connect(url)
    backend = store.backend
    results = []
    try:
        watched = await watched_sandboxes(store, max(streams))
        async with gateway_process(url) as (pid, address):
            writer = RpcWriter(address, watched) if backend == "sqlite" else None
            counts = [0, *streams] if writer is not None else list(streams)
            try:
                if writer is not None:
                    await writer.create_providers()
                for count in counts:
                    chosen = watched[:count]
                    found = await run_fanout(
                        writer or store_writer(store),
                        pid,
                        address,
                        chosen,
                        [i for i, _n in (chosen or watched[:100])],
                        rate,
                        seconds,
                        backend,
                    )
                    results.append(found)
                    progress(
                        f"{backend} {count} streams: delivery p99 {found.delivery.p99_ms:.1f} ms,"
                        f" {found.cpu_ms_per_write:.2f} ms CPU per write"
                    )
            finally:
                if writer is not None:
                    await writer.close()
    finally:
        await store.close()
    return results


def run(args: argparse.Namespace) -> Results:
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    results = Results()
    if args.local_sandboxes > 0:
        results.local = [asyncio.run(run_local(args.local_sandboxes))]
        progress(f"local driver: {results.local[0]}")
    for backend in backends:
        with database_url(backend) as url:
            results.store += asyncio.run(run_store(url, args.sizes))
            if args.attach_seconds > 0:
                results.attach += asyncio.run(run_attach(url, args.attach_seconds))
            if args.streams:
                results.watch += asyncio.run(run_watch(url, args.streams, args.rate, args.seconds))
        if args.startup_sizes:  # a table of its own: the sizes are grown from empty
            with database_url(backend) as url:
                results.startup += asyncio.run(run_startup(url, args.startup_sizes))
                progress(f"{backend} startup: {results.startup[-1]}")
        if args.soak_minutes > 0:
            with database_url(backend) as url:  # a fresh database: no rows of the parts above
                seconds = args.soak_minutes * 60
                results.soak.append(asyncio.run(run_soak(url, backend, seconds, args.soak_rate)))
                progress(f"{backend} soak: {results.soak[-1].slope_mb_per_min:+.2f} MB/min")
    return results


def load_results(path: str) -> Results | None:
    if not path:
        return None
    data = json.loads(Path(path).read_text())

    def latency(d: dict[str, float]) -> Latency:
        return Latency(**d)

    store = []
    for row in data["store"]:
        for key in ("get", "list_first", "list_workspace", "page", "count"):
            row[key] = latency(row[key])
        row["selectors"] = {k: latency(v) for k, v in row["selectors"].items()}
        store.append(StoreScale(**row))
    watch = []
    for row in data["watch"]:
        row["delivery"] = latency(row["delivery"])
        watch.append(WatchScale(**row))
    attach = []
    for row in data.get("attach", []):
        row["latency"] = latency(row["latency"])
        attach.append(AttachScale(**row))
    local = [LocalScale(**row) for row in data.get("local", [])]
    startup = [StartupScale(**row) for row in data.get("startup", [])]
    soak = [SoakScale(**row) for row in data.get("soak", [])]
    label = data.get("label", "")
    return Results(store, watch, label, attach, local, startup=startup, soak=soak)


def merge_into(results: Results, other: Results | None) -> None:
    """Append the rows of ``other`` (a saved run) to each part of ``results``."""
    if other is None:
        return
    for part in ("store", "watch", "attach", "local", "startup", "soak"):
        getattr(results, part).extend(getattr(other, part))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    facts = machine.collect()
    results = run(args)
    facts = machine.finished(facts)
    results.label = args.label or f"commit {facts.code.commit}"
    merged = []
    for path in args.merge:
        other = load_results(path)
        merge_into(results, other)
        merged.append((path, other.label if other is not None else ""))
    if args.save:
        Path(args.save).write_text(json.dumps(dataclasses.asdict(results), indent=1))
    baseline = load_results(args.baseline)
    command = "python -m bench.scale " + " ".join(argv if argv is not None else sys.argv[1:])
    section = render_section(results, baseline, facts, command.strip(), merged)
    print(section)
    if args.output:
        output = Path(args.output)
        images = output.parent / "img"
        plot(results, baseline, images)
        text = output.read_text() if output.exists() else ""
        output.write_text(replace_section(text, section))
        progress(f"wrote {output} and the plots in {images}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
