"""Shared fixtures: a real Postgres server for the run, a fresh database per test, and the
``store_url`` / ``store`` fixtures that run every conformance test on SQLite and Postgres.

Postgres: ``SHELLGATE_TEST_DATABASE_URL`` (an admin DSN) when set, otherwise a throwaway
server started once per run by pytest-postgresql (as the ``postgres`` user when running as
root, through tests/support/pg_ctl_as_postgres). Under ``CI=true`` a Postgres test that could
not run fails the session instead of being skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from pytest_postgresql import factories

from shellgate.store import Store, connect
from tests.support.fake_driver import FakeDriver
from tests.support.gateway import Running, running_gateway

HERE = Path(__file__).parent
IN_CI = os.environ.get("CI", "").lower() == "true"
_WRAPPER = str(HERE / "support" / "pg_ctl_as_postgres")

postgresql_proc = factories.postgresql_proc(
    executable=_WRAPPER if os.geteuid() == 0 else None,
    postgres_options="-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c max_connections=300",
)


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"Postgres is required under CI=true: {reason}")
    pytest.skip(f"Postgres unavailable: {reason}")


@pytest.fixture(scope="session")
def pg_admin_dsn(request: pytest.FixtureRequest) -> str:
    """A DSN of a database on which we may CREATE DATABASE."""
    configured = os.environ.get("SHELLGATE_TEST_DATABASE_URL")
    if configured:
        return configured
    try:
        proc = request.getfixturevalue("postgresql_proc")
    except Exception as exc:  # the server could not start: say why, fail under CI
        _unavailable(f"could not start a throwaway server: {exc}")
        raise
    return f"postgresql://{proc.user}@{proc.host}:{proc.port}/postgres"


def create_database(admin_dsn: str) -> tuple[str, str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin_dsn.rpartition("/")
    return name, f"{base}/{name}"


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh, empty database for one test."""
    name, dsn = create_database(pg_admin_dsn)
    yield dsn
    drop_database(pg_admin_dsn, name)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL, once per backend: a real SQLite file, and a real Postgres database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shellgate.db'}"
    return str(request.getfixturevalue("pg_dsn"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await connect(store_url)
    yield opened
    await opened.close()


@pytest.fixture
async def gw(store: Store) -> AsyncIterator[Running]:
    """An in-process gateway with a fake driver, on the parametrized store."""
    async with running_gateway(store, FakeDriver()) as running:
        yield running


@pytest.fixture
async def second_store(store_url: str) -> AsyncIterator[Store]:
    other = await connect(store_url)
    yield other
    await other.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true, a skipped Postgres test is a failure."""
    if not IN_CI:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    postgres_skips = [r for r in skipped if "postgres" in r.nodeid or "pg_" in r.nodeid]
    if postgres_skips:
        reporter.write_line(  # type: ignore[union-attr]
            f"CI=true: {len(postgres_skips)} Postgres test(s) were skipped; failing the run."
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
