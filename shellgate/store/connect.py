"""Open a store from a URL: the one place that picks a backend."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from shellgate.store.base import RetryPolicy, Store
from shellgate.store.errors import ConfigurationError
from shellgate.store.observer import StoreObserver
from shellgate.store.postgres import PostgresStore
from shellgate.store.records import StoreTimeouts
from shellgate.store.sqlite import DEFAULT_LOCK_WAIT_MS, SqliteStore

ACCEPTED_FORMS = (
    "sqlite:///relative/file.db, sqlite:////absolute/file.db, sqlite:///:memory:, "
    "postgresql://user@host:port/db"
)


async def connect(
    url: str,
    *,
    observer: StoreObserver | None = None,
    retry: RetryPolicy | None = None,
    migrate_to: int | None = None,
    timeouts: StoreTimeouts | None = None,
) -> Store:
    """Open the database named by ``url`` and apply its migrations.

    ``migrate_to`` stops at a given migration; it exists for upgrade tests.
    """
    store = store_for_url(url, observer=observer, retry=retry, timeouts=timeouts)
    await store.open(migrate_to=migrate_to)
    return store


def store_for_url(
    url: str,
    *,
    observer: StoreObserver | None = None,
    retry: RetryPolicy | None = None,
    timeouts: StoreTimeouts | None = None,
) -> Store:
    """The unopened store for ``url``; raises ``ConfigurationError`` naming the accepted forms."""
    parts = urlsplit(url)
    if parts.scheme in ("postgres", "postgresql"):
        timeouts = timeouts or StoreTimeouts()
        return PostgresStore(
            url,
            observer=observer,
            retry=retry,
            statement_timeout=timeouts.statement,
            acquire_timeout=timeouts.acquire,
        )
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise ConfigurationError(
                f"invalid SQLite URL {url!r}: use three slashes and a path ({ACCEPTED_FORMS})"
            )
        # As in SQLAlchemy: what follows "sqlite:///" is the path, so three slashes give a
        # relative path (sqlite:///./state.db) and four an absolute one (sqlite:////var/db).
        path = parts.path[1:]
        options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        unknown = set(options) - {"synchronous", "busy_timeout_ms", "lock_wait_ms"}
        if unknown:
            raise ConfigurationError(f"unknown SQLite URL options: {', '.join(sorted(unknown))}")
        return SqliteStore(
            path,
            synchronous=options.get("synchronous", "FULL"),
            busy_timeout_ms=_milliseconds(options, "busy_timeout_ms", 5000),
            lock_wait_ms=_milliseconds(options, "lock_wait_ms", DEFAULT_LOCK_WAIT_MS),
            observer=observer,
            retry=retry,
        )
    raise ConfigurationError(f"unsupported database URL {url!r}; accepted forms: {ACCEPTED_FORMS}")


def _milliseconds(options: dict[str, str], name: str, default: int) -> int:
    """A URL option in whole milliseconds; a bad one is a configuration error naming it."""
    raw = options.get(name, str(default))
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ConfigurationError(f"SQLite URL option {name} must be a positive integer")
    return int(raw)
