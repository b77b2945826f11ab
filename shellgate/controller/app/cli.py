"""The ``shellgate`` command: ``migrate``, ``serve`` and ``rotate-key``.

Every flag of ``serve`` can also come from an environment variable (named in its help), so
the same image runs from a Helm chart, a systemd unit or a terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from shellgate.controller.app import rotate, serve
from shellgate.controller.app.options import DEFAULT_DATABASE_URL, env_default
from shellgate.store import ConfigurationError, StoreError, connect

log = logging.getLogger("shellgate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shellgate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    migrate = commands.add_parser("migrate", help="apply the database migrations and exit")
    migrate.add_argument(
        "--database-url",
        default=env_default("SHELLGATE_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="database URL (SHELLGATE_DATABASE_URL); default %(default)s",
    )
    serve.add_command(commands)
    rotate.add_command(commands)
    return parser


async def run_migrate(database_url: str) -> int:
    store = await connect(database_url)
    try:
        version = await store.schema_version()
    finally:
        await store.close()
    print(f"database migrated to schema version {version}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        if args.command == "migrate":
            return asyncio.run(run_migrate(args.database_url))
        if args.command == "rotate-key":
            return asyncio.run(rotate.rotate_key(args))
        return int(args.run(args))
    except ConfigurationError as exc:
        print(f"shellgate: configuration error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"shellgate: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
