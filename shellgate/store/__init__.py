"""Persistence: one ``objects`` table, every write a compare-and-swap on ``resource_version``.

See docs/persistence.md for the rules; ``Store`` (base.py) for the interface.
"""

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
    "store_for_url",
]
