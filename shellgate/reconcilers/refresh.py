"""Provider credential refresh and rotation: what a valid configuration is, the status a
client sees, and the changes configure and rotate make to a refresh row.

A refresh row says how one credential of one provider is renewed (a strategy and its
material, sealed at rest). shellgate stores the configuration and records rotations; it does
not itself run the strategies (no OAuth or cloud token exchange happens here), so a
configured credential reads ``configured`` and a requested rotation ``rotation_requested``
until something outside renews the credential with UpdateProvider.

A rotation is identified by its request id: the refresh row keeps the latest request ids it
recorded, and the rotation mutation, applied to the row as read inside the CAS, records a
request id at most once. Two replicas handling the same request concurrently therefore
rotate once: the second one's CAS re-reads the row, finds the id, and changes nothing.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from shellgate.api import datamodel_pb2, internal_pb2, openshell_pb2
from shellgate.reconcilers.errors import FieldViolation, InvalidArgument
from shellgate.reconcilers.validation import (
    MAX_MAP_KEY_LEN,
    require_valid,
    validate_environment_like_credentials,
    validate_max_len,
    validate_string_map,
)

RefreshConfig = internal_pb2.ProviderRefreshConfig
RotationRequest = internal_pb2.ProviderRotationRequest
Status = openshell_pb2.ProviderCredentialRefreshStatus

CONFIGURED = "configured"
ROTATION_REQUESTED = "rotation_requested"
MAX_APPLIED_IDS = 256
MAX_REQUEST_ID_LEN = 128
MAX_MATERIAL_ENTRIES = 32
UNSPECIFIED = openshell_pb2.PROVIDER_CREDENTIAL_REFRESH_STRATEGY_UNSPECIFIED


def validate_credential_key(key: str, field: str = "credential_key") -> list[FieldViolation]:
    if not key:
        return [FieldViolation(field, f"{field} is required")]
    return validate_environment_like_credentials({key: "x"}) and [
        FieldViolation(field, f"{field} must be an environment variable name")
    ]


def validate_configure(request: openshell_pb2.ConfigureProviderRefreshRequest) -> None:
    violations = validate_credential_key(request.credential_key)
    if request.strategy == UNSPECIFIED:
        violations.append(FieldViolation("strategy", "strategy is required"))
    elif request.strategy not in openshell_pb2.ProviderCredentialRefreshStrategy.values():
        violations.append(FieldViolation("strategy", "strategy is not a known strategy"))
    violations += validate_string_map(
        request.material, "material", max_entries=MAX_MATERIAL_ENTRIES
    )
    for key in request.secret_material_keys:
        if key not in request.material:
            violations.append(
                FieldViolation(
                    "secret_material_keys",
                    f"secret_material_keys names {key[:MAX_MAP_KEY_LEN]!r}, not in material",
                )
            )
    violations += validate_max_len(request.request_id, "request_id", MAX_REQUEST_ID_LEN)
    require_valid(violations)


def refresh_row_id(provider_id: str, credential_key: str) -> str:
    return f"provider-refresh-{provider_id}-{credential_key}"


def rotation_row_id(provider_id: str, credential_key: str, request_id: str) -> str:
    """Derived from what identifies the request, so its second arrival names the same row."""
    digest = hashlib.sha256(f"{provider_id}\0{credential_key}\0{request_id}".encode())
    return f"provider-rotation-{digest.hexdigest()[:32]}"


def new_config(
    request: openshell_pb2.ConfigureProviderRefreshRequest,
    provider: datamodel_pb2.Provider,
    now_ms: int,
) -> RefreshConfig:
    config = RefreshConfig()
    meta = config.metadata
    meta.id = refresh_row_id(provider.metadata.id, request.credential_key)
    meta.workspace = provider.metadata.workspace
    config.status.provider = provider.metadata.name
    config.status.provider_id = provider.metadata.id
    config.status.credential_key = request.credential_key
    ConfigureChange(request, now_ms)(config)
    return config


class ConfigureChange:
    """ConfigureProviderRefresh on a row: strategy, material and expiry replaced; the
    rotation history kept. Material values arrive open; the repository seals them."""

    def __init__(self, request: openshell_pb2.ConfigureProviderRefreshRequest, now_ms: int) -> None:
        self.request = request
        self.now_ms = now_ms

    def __call__(self, config: RefreshConfig) -> RefreshConfig:
        request, status = self.request, config.status
        status.strategy = request.strategy
        status.status = CONFIGURED
        if request.HasField("expiration_time"):
            status.expiration_time.CopyFrom(request.expiration_time)
        else:
            status.ClearField("expiration_time")
        config.material.clear()
        config.material.update(request.material)
        del config.secret_material_keys[:]
        config.secret_material_keys.extend(request.secret_material_keys)
        return config


class RotationChange:
    """Record one rotation for ``request_id`` unless the row already recorded it."""

    def __init__(self, request_id: str, now_ms: int) -> None:
        self.request_id = request_id
        self.now_ms = now_ms

    def __call__(self, config: RefreshConfig) -> RefreshConfig:
        if self.request_id in config.applied_request_ids:
            return config
        config.rotations += 1
        config.applied_request_ids.append(self.request_id)
        del config.applied_request_ids[:-MAX_APPLIED_IDS]
        config.status.status = ROTATION_REQUESTED
        config.status.next_refresh_time.FromMilliseconds(self.now_ms)
        return config


def mark_applied(request: RotationRequest) -> RotationRequest:
    request.applied = True
    return request


def remaining_lifetime_problem(
    key: str, expiration: datetime | None, minimum_seconds: float, now: datetime
) -> str | None:
    """Why a credential cannot be handed out with ``minimum_seconds`` of life left (shellgate
    renews nothing itself), or None."""
    if expiration is None:
        return None
    left = (expiration - now).total_seconds()
    if left <= 0:
        return f"credential {key!r} has expired"
    if left < minimum_seconds:
        return f"credential {key!r} expires in {int(left)}s, less than the minimum requested"
    return None


def utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def require_credential_keys(keys: list[str]) -> None:
    if not 1 <= len(keys) <= 32 or len(set(keys)) != len(keys):
        raise InvalidArgument.single(
            "credential_keys", "select between 1 and 32 unique runtime environment keys"
        )
    for key in keys:
        require_valid(validate_credential_key(key, "credential_keys"))
