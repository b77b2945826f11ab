"""``python -m bench.store_cas``: the store's compare-and-swap benchmark.

First, side by side in interleaved rounds (bench/compare.py): per backend (SQLite file,
Postgres) the physical floor, ``update_message_cas`` and SQLAlchemy's versioned ORM rows,
plus etcd's transaction CAS, with one writer and with 16 writers on one object. Then, per
backend, the multi-process loads: (c) 16 steady writers in 4 processes on one object, (d)
the same writers flat out, (e) 16 writers flat out on 16 objects, and the steady load with
1-16 writers. Prints the tables and writes its section of docs/benchmarks.md (between its
markers; the rest of the file is left alone) plus docs/img/store_cas_scaling.png. A full
run takes about 4 minutes on 2 cores; ``--quick`` about 1.

Flags: ``--quick``, ``--backends sqlite,postgres``, ``--no-loads`` (the comparison only),
``--output docs/benchmarks.md`` (``--output ''`` writes nothing). Postgres is a throwaway
server unless ``SHELLGATE_BENCH_DATABASE_URL`` is set (see bench/postgres_server.py); etcd
is a throwaway member when a binary is found (bench/etcd_server.py), else a "skipped" row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import machine, report
from bench.compare import Comparison, Plan, run_comparison
from bench.etcd_server import INSTALL_HINT, etcd_server
from bench.loads import process_pool
from bench.suite import BACKENDS, BackendResults, database_url, run_backend
from bench.workloads import Timing
from shellgate.store import RetryPolicy

FULL = Timing(warmup=0.5, duration=5.0)
QUICK = Timing(warmup=0.2, duration=1.0)
FULL_PLAN = Plan(rounds=20, round_s=0.25, warmup=0.5, many_rounds=10)
QUICK_PLAN = Plan(rounds=3, round_s=0.3, warmup=0.2, many_rounds=2)
DEFAULT_OUTPUT = "docs/benchmarks.md"
IMAGE_NAME = "img/store_cas_scaling.png"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.store_cas", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short rounds and loads")
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        type=_backends,
        help="comma-separated: sqlite, postgres (default: both)",
    )
    parser.add_argument("--no-loads", action="store_true", help="only the side-by-side comparison")
    parser.add_argument(
        "--output", default=DEFAULT_OUTPUT, help="the Markdown file to write ('' for none)"
    )
    return parser.parse_args(argv)


def _backends(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BACKENDS))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(BACKENDS)}, got {text!r}")
    return chosen


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_all(
    backends: Sequence[str], timing: Timing, plan: Plan, retry: RetryPolicy, loads: bool
) -> tuple[Comparison, list[BackendResults]]:
    with contextlib.ExitStack() as stack:
        urls = {backend: stack.enter_context(database_url(backend)) for backend in backends}
        etcd = stack.enter_context(etcd_server())
        if etcd is None:
            progress(f"etcd: skipped: etcd not installed ({INSTALL_HINT})")
        comparison = asyncio.run(run_comparison(urls, etcd, retry, plan, progress))
        results = []
        if loads:
            with process_pool() as pool:
                for backend in backends:
                    progress(f"{backend}: multi-process loads")
                    run = run_backend(backend, urls[backend], timing, pool, progress, retry)
                    results.append(asyncio.run(run))
    return comparison, results


def write_outputs(
    comparison: Comparison,
    results: Sequence[BackendResults],
    facts: machine.MachineFacts,
    timing: Timing,
    command: str,
    output: Path,
) -> None:
    image: str | None = None
    if results:
        image = IMAGE_NAME
        report.plot_scaling(results, output.parent / IMAGE_NAME)
    section = report.document(comparison, results, facts, timing, image, command)
    report.write_section(output, section)
    progress(f"wrote {output}" + (f" and {output.parent / IMAGE_NAME}" if image else ""))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    timing, plan = (QUICK, QUICK_PLAN) if args.quick else (FULL, FULL_PLAN)
    facts = machine.collect()
    retry = RetryPolicy()  # read once: every store and peer of the run uses exactly this
    comparison, results = run_all(args.backends, timing, plan, retry, not args.no_loads)
    facts = machine.finished(facts)
    print(report.console_report(comparison, results))
    if args.output:
        command = "python -m bench.store_cas" + " ".join(
            ["", *(["--quick"] if args.quick else []), *(["--no-loads"] if args.no_loads else [])]
        )
        if list(args.backends) != list(BACKENDS):
            command += f" --backends {','.join(args.backends)}"
        write_outputs(comparison, results, facts, timing, command, Path(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
