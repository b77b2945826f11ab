"""A durable Postgres for fault tests: fsync, synchronous_commit and full_page_writes on.

The suite's quick server runs with them off, and an immediate stop of that server may lose
commits it acknowledged; a fault test on it would blame shellgate for the server's settings.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_postgresql import factories

from tests.conftest import _WRAPPER, _unavailable, create_database, drop_database

durable_postgresql_proc = factories.postgresql_proc(
    executable=_WRAPPER if os.geteuid() == 0 else None,
    postgres_options="-c fsync=on -c synchronous_commit=on -c full_page_writes=on "
    "-c max_connections=60",
)


@pytest.fixture(scope="session")
def durable_pg(request: pytest.FixtureRequest) -> Any:
    try:
        return request.getfixturevalue("durable_postgresql_proc")
    except Exception as exc:
        _unavailable(f"could not start a durable server: {exc}")
        raise


@pytest.fixture
def durable_pg_dsn(durable_pg: Any) -> Iterator[str]:
    admin = f"postgresql://{durable_pg.user}@{durable_pg.host}:{durable_pg.port}/postgres"
    name, dsn = create_database(admin)
    yield dsn
    drop_database(admin, name)
