"""Annotation keys that shellgate itself writes on stored objects.

They live in ``metadata.annotations`` because the wire schema (which must match the SDK) has
no field for them, and we never invent one. Clients may not set them: a forged driver
revision would make every later driver snapshot look stale and freeze the sandbox's status.
"""

from __future__ import annotations

DRIVER_REVISION_ANNOTATION = "openshell.ai/driver-revision"
"""The driver revision (decimal) of the last snapshot applied to a sandbox's status."""

OWNER_REPLICA_ANNOTATION = "openshell.ai/owner-replica"
"""The replica whose driver runs the sandbox, for drivers whose sandboxes only one replica can
touch (the local driver). Written by CreateSandbox before the driver call, so the row, not a
file on some host, says who may act on the sandbox."""

RESERVED_ANNOTATION_KEYS: frozenset[str] = frozenset(
    {DRIVER_REVISION_ANNOTATION, OWNER_REPLICA_ANNOTATION}
)
"""Keys that only shellgate writes; client-supplied annotations must not contain them."""
