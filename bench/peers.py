"""The peers: the same read-mutate-CAS written the way other tools are used for it.

* ``SqlAlchemyPeer``: SQLAlchemy 2 ORM with ``version_id_col`` (what a Python team would
  write): an ``AsyncSession`` per call, ``session.get``, change the payload, commit; the
  ORM adds ``WHERE version = :read`` to its UPDATE and raises ``StaleDataError`` when it
  matched no row. Async engine on aiosqlite (WAL, ``synchronous=FULL``, as the store) or
  asyncpg, with the engine's default pool.
* ``EtcdPeer``: etcd's transaction compare-and-swap on ``mod_revision`` (what Kubernetes
  does for the same job) through the ``aetcd`` client (gRPC): get, decode, increment,
  encode, ``txn(compare mod_revision == read, success put)``.

Both follow shellgate's retry rule: at most ``RetryPolicy.attempts`` attempts, each one
re-reading and re-applying, full-jitter pauses between them; ``PeerExhausted`` after the
last. Each object's counter is readable (``counter``) for the lost-update check.
"""

from __future__ import annotations

import abc
import asyncio
import random
import uuid
from collections.abc import Callable
from typing import Any

from bench.floor import next_payload
from bench.objects import Sandbox, bench_sandbox
from shellgate.store import RetryPolicy


class PeerExhausted(Exception):
    """Every attempt lost its compare-and-swap."""


class LostRace(Exception):
    """One attempt lost its compare-and-swap."""


class Peer(abc.ABC):
    name: str

    def __init__(self, retry: RetryPolicy) -> None:
        self._retry = retry
        self._rng = random.Random()

    @abc.abstractmethod
    async def create(self) -> str:
        """A new object holding a fresh bench sandbox; its id."""

    @abc.abstractmethod
    async def _attempt(self, object_id: str) -> None:
        """One read-mutate-CAS; ``LostRace`` when the CAS matched nothing."""

    @abc.abstractmethod
    async def counter(self, object_id: str) -> int: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def update(self, object_id: str, conflicts: Callable[[], None] | None = None) -> None:
        """The retry rule around ``_attempt``; ``conflicts`` is called per lost attempt."""
        for number in range(1, self._retry.attempts + 1):
            try:
                await self._attempt(object_id)
                return
            except LostRace:
                if conflicts is not None:
                    conflicts()
                if number < self._retry.attempts:
                    await asyncio.sleep(self._retry.pause(number, self._rng))
        raise PeerExhausted(object_id)


# ----- SQLAlchemy 2 ORM ---------------------------------------------------------------------


def _sqlalchemy_model() -> tuple[Any, Any]:
    """The declarative base and the versioned row (built on first use: SQLAlchemy is in the
    ``bench`` extra only, and the bench's smoke test runs without it)."""
    from sqlalchemy import BigInteger, Column, LargeBinary, String
    from sqlalchemy.orm import DeclarativeBase

    class Base(DeclarativeBase):
        pass

    class VersionedRow(Base):
        __tablename__ = "bench_sqlalchemy"
        id = Column(String, primary_key=True)
        payload = Column(LargeBinary, nullable=False)
        version = Column(BigInteger, nullable=False)
        __mapper_args__ = {"version_id_col": version}

    return Base, VersionedRow


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy async URL for a bench database URL."""
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url.removeprefix("sqlite:")
    return "postgresql+asyncpg:" + url.split(":", 1)[1]


class SqlAlchemyPeer(Peer):
    def __init__(self, retry: RetryPolicy, engine: Any, model: Any) -> None:
        super().__init__(retry)
        from sqlalchemy.ext.asyncio import async_sessionmaker
        from sqlalchemy.orm.exc import StaleDataError

        self._engine = engine
        self._model = model
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._stale = StaleDataError

    @classmethod
    async def open(cls, url: str, retry: RetryPolicy) -> SqlAlchemyPeer:
        from sqlalchemy import event
        from sqlalchemy.ext.asyncio import create_async_engine

        base, model = _sqlalchemy_model()
        engine = create_async_engine(sqlalchemy_url(url))
        if url.startswith("sqlite:"):

            @event.listens_for(engine.sync_engine, "connect")
            def durable(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA busy_timeout = 5000")
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = FULL")
                cursor.close()

        async with engine.begin() as conn:
            await conn.run_sync(base.metadata.create_all)
        peer = cls(retry, engine, model)
        peer.name = "SQLAlchemy 2 ORM, version_id_col"
        return peer

    async def create(self) -> str:
        object_id = str(uuid.uuid4())
        payload = bench_sandbox().SerializeToString(deterministic=True)
        async with self._sessions() as session, session.begin():
            session.add(self._model(id=object_id, payload=payload))
        return object_id

    async def _attempt(self, object_id: str) -> None:
        try:
            async with self._sessions() as session, session.begin():
                row = await session.get(self._model, object_id)
                row.payload = next_payload(row.payload)
        except self._stale:
            raise LostRace(object_id) from None

    async def counter(self, object_id: str) -> int:
        async with self._sessions() as session:
            row = await session.get(self._model, object_id)
            return int(Sandbox.FromString(row.payload).status.current_policy_version)

    async def close(self) -> None:
        await self._engine.dispose()


# ----- etcd ----------------------------------------------------------------------------------


class EtcdPeer(Peer):
    def __init__(self, retry: RetryPolicy, client: Any) -> None:
        super().__init__(retry)
        self._client = client
        self.name = "etcd txn on mod_revision (aetcd)"

    @classmethod
    async def open(cls, host: str, port: int, retry: RetryPolicy) -> EtcdPeer:
        import aetcd

        client = aetcd.Client(host=host, port=port)
        await client.status()
        return cls(retry, client)

    async def create(self) -> str:
        key = f"/bench/{uuid.uuid4()}"
        payload = bench_sandbox().SerializeToString(deterministic=True)
        await self._client.put(key.encode(), payload)
        return key

    async def _attempt(self, object_id: str) -> None:
        key = object_id.encode()
        read = await self._client.get(key)
        tx = self._client.transactions
        written, _ = await self._client.transaction(
            compare=[tx.mod(key) == read.mod_revision],
            success=[tx.put(key, next_payload(read.value))],
            failure=[],
        )
        if not written:
            raise LostRace(object_id)

    async def counter(self, object_id: str) -> int:
        read = await self._client.get(object_id.encode())
        return int(Sandbox.FromString(read.value).status.current_policy_version)

    async def close(self) -> None:
        await self._client.close()
