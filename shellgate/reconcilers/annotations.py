"""Annotation keys that shellgate itself writes on stored objects.

They live in ``metadata.annotations`` because the wire schema (which must match the SDK) has
no field for them, and we never invent one. Clients may not set them: a forged driver
revision would make every later driver snapshot look stale and freeze the sandbox's status.
"""

from __future__ import annotations

DRIVER_REVISION_ANNOTATION = "openshell.ai/driver-revision"
"""The driver revision (decimal) of the last snapshot applied to a sandbox's status."""

RESERVED_ANNOTATION_KEYS: frozenset[str] = frozenset({DRIVER_REVISION_ANNOTATION})
"""Keys that only shellgate writes; client-supplied annotations must not contain them."""
