"""``python -m bench.store_cas``: the store's compare-and-swap benchmark.

Runs, per backend (SQLite file, Postgres), (a) ``update_message_cas`` with one writer,
(b) the same loop on the bare driver, (c) 16 steady writers in 4 processes on one object,
(d) the same writers flat out, (e) 16 writers flat out on 16 objects, and the steady load
with 1-16 writers; prints the tables with (a)/(b) and writes docs/benchmarks.md plus
docs/img/store_cas_scaling.png. A full run takes about 2 minutes on 2 cores; ``--quick``
about 40 s.

Flags: ``--quick`` (1 s per measurement), ``--backends sqlite,postgres``,
``--output docs/benchmarks.md`` (``--output ''`` writes nothing). Postgres is a throwaway
server unless ``SHELLGATE_BENCH_DATABASE_URL`` is set (see bench/postgres_server.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path

from bench import machine, report
from bench.loads import process_pool
from bench.suite import BACKENDS, BackendResults, database_url, run_backend
from bench.workloads import Timing
from shellgate.store import RetryPolicy

FULL = Timing(warmup=0.5, duration=5.0)
QUICK = Timing(warmup=0.2, duration=1.0)
DEFAULT_OUTPUT = "docs/benchmarks.md"
IMAGE_NAME = "img/store_cas_scaling.png"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.store_cas", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 s per measurement")
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        type=_backends,
        help="comma-separated: sqlite, postgres (default: both)",
    )
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
    backends: Sequence[str], timing: Timing, pool: Executor, retry: RetryPolicy
) -> list[BackendResults]:
    results = []
    for backend in backends:
        progress(f"{backend}: starting")
        with database_url(backend) as url:
            run = run_backend(backend, url, timing, pool, progress, retry)
            results.append(asyncio.run(run))
    return results


def write_outputs(
    results: Sequence[BackendResults],
    facts: machine.MachineFacts,
    timing: Timing,
    output: Path,
) -> None:
    image = output.parent / IMAGE_NAME
    report.plot_scaling(results, image)
    command = "python -m bench.store_cas" + (" --quick" if timing is QUICK else "")
    if [r.backend for r in results] != list(BACKENDS):
        command += f" --backends {','.join(r.backend for r in results)}"
    output.write_text(report.document(results, facts, timing, IMAGE_NAME, command))
    progress(f"wrote {output} and {image}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    timing = QUICK if args.quick else FULL
    facts = machine.collect()
    retry = RetryPolicy()  # read once: every store of the run uses exactly this policy
    with process_pool() as pool:
        results = run_all(args.backends, timing, pool, retry)
    facts = machine.finished(facts)
    print(report.console_report(results))
    if args.output:
        write_outputs(results, facts, timing, Path(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
