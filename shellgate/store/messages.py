"""Which protobuf message type lives under which ``object_type``.

The store keys the mapping by the message's full protobuf name. Each typed repository
(``store/repositories/``) registers the message it stores when it is imported, and importing
``shellgate.store`` imports them all, so every user of the store sees every kind.
"""

from __future__ import annotations

from google.protobuf.message import Message

OBJECT_TYPES: dict[str, str] = {}


def register_object_type(full_name: str, object_type: str) -> None:
    """Store messages called ``full_name`` under ``object_type`` (done by the repositories)."""
    existing = OBJECT_TYPES.get(full_name)
    if existing is not None and existing != object_type:
        raise ValueError(f"{full_name} is already stored as {existing!r}")
    OBJECT_TYPES[full_name] = object_type


def object_type_of(message_type: type[Message]) -> str:
    full_name = message_type.DESCRIPTOR.full_name
    try:
        return OBJECT_TYPES[full_name]
    except KeyError:
        raise TypeError(f"no object_type registered for message {full_name}") from None
