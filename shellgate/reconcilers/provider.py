"""Provider create and update decisions: CreateProvider and UpdateProvider as the reference
gateway answers them.

Everything here runs before any I/O, and the update merge runs again inside every CAS
attempt against the freshly read row: the merged *candidate* is validated, then written, so
an update can never store a provider that create would have refused.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from shellgate.api import datamodel_pb2
from shellgate.reconcilers.errors import InvalidArgument
from shellgate.reconcilers.validation import require_valid, validate_provider

Provider = datamodel_pb2.Provider

DEFAULT_WORKSPACE = "default"
"""Workspace of objects created without one (an empty workspace means "default", as in the
reference)."""

REDACTED = "REDACTED"
"""What a response shows instead of a credential value."""


def _copy(provider: Provider) -> Provider:
    """A deep copy, so that callers' messages (requests, stored rows) are never modified."""
    copied = Provider()
    copied.CopyFrom(provider)
    return copied


def _merge_map(target: MutableMapping[str, str], incoming: Mapping[str, str]) -> None:
    """Apply an update map: a key with an empty value is deleted, any other is set.

    An empty incoming map changes nothing, so a client can update config without resending
    credentials (which responses never reveal).
    """
    for key, value in incoming.items():
        if value:
            target[key] = value
        else:
            target.pop(key, None)


def _check_identity(existing: Provider, incoming: Provider) -> None:
    """The update must name the stored provider and may not change its type.

    Type is compared trimmed and case-insensitively, so resending "GitHub " for "github"
    is not a change; an empty incoming type means "keep".
    """
    name = incoming.metadata.name
    if not name:
        raise InvalidArgument.single("provider.metadata.name", "provider.metadata.name is required")
    if name != existing.metadata.name:
        raise InvalidArgument.single(
            "provider.metadata.name",
            f"provider.metadata.name {name!r} does not match the stored provider "
            f"{existing.metadata.name!r}",
        )
    incoming_type = incoming.type.strip().lower()
    if incoming_type and incoming_type != existing.type.strip().lower():
        raise InvalidArgument.single(
            "provider.type",
            f"provider.type cannot be changed (stored {existing.type!r}, got {incoming.type!r})",
        )


def merge_provider_update(existing: Provider, incoming: Provider) -> Provider:
    """The candidate an UpdateProvider would store, validated; ``existing`` is not modified.

    Credentials and config are merged key by key (see ``_merge_map``); labels are replaced
    when the update carries any (so labels cannot be cleared to empty through an update).
    Identity (id, name, workspace, created time, resource version), type and the other
    fields stay those of ``existing``. Raises ``InvalidArgument`` for a name mismatch, a
    type change, or a candidate that breaks a limit (for example the last credential
    deleted, or a 33rd credential).
    """
    _check_identity(existing, incoming)
    candidate = _copy(existing)
    _merge_map(candidate.credentials, incoming.credentials)
    _merge_map(candidate.config, incoming.config)
    if incoming.metadata.labels:
        candidate.metadata.labels.clear()
        candidate.metadata.labels.update(incoming.metadata.labels)
    require_valid(validate_provider(candidate))
    return candidate


def redact_credentials(provider: Provider) -> Provider:
    """A copy for responses: every credential value becomes "REDACTED", keys are kept.

    Keys stay so that clients can see which credentials are set and address them in updates.
    """
    redacted = _copy(provider)
    for key in list(redacted.credentials):
        redacted.credentials[key] = REDACTED
    return redacted


def new_provider_for_create(provider: Provider, *, new_id: str, random_name: str) -> Provider:
    """The provider CreateProvider inserts: defaults applied and validated before any I/O.

    The id is always ``new_id`` (a client never chooses ids), an empty name becomes
    ``random_name``, an empty workspace becomes "default", and the resource version is reset
    to 0 because the store assigns it. The caller supplies the id and name so that this stays
    a pure function. Raises ``InvalidArgument`` when the result breaks a rule.
    """
    created = _copy(provider)
    created.metadata.id = new_id
    if not created.metadata.name:
        created.metadata.name = random_name
    if not created.metadata.workspace:
        created.metadata.workspace = DEFAULT_WORKSPACE
    created.metadata.resource_version = 0
    require_valid(validate_provider(created))
    return created
