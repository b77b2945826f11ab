"""Persistence: one ``objects`` table, every write a compare-and-swap on ``resource_version``.

See docs/persistence.md for the rules; ``Store`` (base.py) for the interface.
"""

# The repositories register the message type of each kind of row on import (after the names
# above exist, since they import from the store's modules).
from shellgate.store import repositories
from shellgate.store.base import RetryPolicy, Store, decode
from shellgate.store.connect import ACCEPTED_FORMS, connect, store_for_url
from shellgate.store.errors import (
    ConfigurationError,
    Conflict,
    InvalidMutation,
    InvalidPageToken,
    InvalidSelector,
    InvalidValue,
    MigrationError,
    NotFound,
    StoreError,
    StoreUnavailable,
    UniqueViolation,
)
from shellgate.store.messages import object_type_of, register_object_type
from shellgate.store.observer import CasResult, NullObserver, StoreObserver
from shellgate.store.records import (
    DEFAULT_WORKSPACE,
    CasOutcome,
    ChangeEvent,
    ObjectRecord,
    Page,
    StoreTimeouts,
    WriteCondition,
    WriteResult,
)
from shellgate.store.repositories import Repositories

__all__ = [
    "ACCEPTED_FORMS",
    "DEFAULT_WORKSPACE",
    "CasOutcome",
    "CasResult",
    "ChangeEvent",
    "ConfigurationError",
    "Conflict",
    "InvalidMutation",
    "InvalidPageToken",
    "InvalidSelector",
    "InvalidValue",
    "MigrationError",
    "NotFound",
    "NullObserver",
    "ObjectRecord",
    "Page",
    "Repositories",
    "RetryPolicy",
    "Store",
    "StoreError",
    "StoreObserver",
    "StoreTimeouts",
    "StoreUnavailable",
    "UniqueViolation",
    "WriteCondition",
    "WriteResult",
    "connect",
    "decode",
    "object_type_of",
    "register_object_type",
    "repositories",
    "store_for_url",
]
