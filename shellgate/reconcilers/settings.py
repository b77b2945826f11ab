"""Settings decisions for UpdateConfig: keys, values, scopes.

A setting update is one semantic change, set or delete one key, applied by a mutation to a
fresh copy of the stored settings on every CAS attempt. The revision goes up by exactly one
when the key really changed and not at all otherwise, so "revision == number of changes"
holds however many replicas race (no in-process mutex: a lock in one process would not
stop another replica). The effective config of a
sandbox layers the gateway-wide settings over the sandbox's own: a key set globally wins, and
a sandbox may not set or delete a key that is managed globally.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from shellgate.api import internal_pb2, openshell_pb2, sandbox_pb2
from shellgate.reconcilers.errors import FailedPrecondition, InvalidArgument

SettingValue = sandbox_pb2.SettingValue
EffectiveSetting = sandbox_pb2.EffectiveSetting
GatewaySettings = internal_pb2.GatewaySettings
SandboxSettings = internal_pb2.SandboxSettings
Settings = TypeVar("Settings", GatewaySettings, SandboxSettings)

POLICY_KEY = "policy"
"""Reserved: the global policy is set with UpdateConfig.policy, never as a setting."""

REGISTERED_SETTINGS: dict[str, str] = {
    "providers_v2_enabled": "bool_value",
    "ocsf_json_enabled": "bool_value",
    "agent_policy_proposals_enabled": "bool_value",
    "dummy_int": "int_value",
    "dummy_bool": "bool_value",
}
"""Every key a client may set, with the ``SettingValue`` field its value must use (the reference's
registry; an unknown key is refused so a typo never becomes a silent no-op)."""

SCOPE_SANDBOX = sandbox_pb2.SETTING_SCOPE_SANDBOX
SCOPE_GLOBAL = sandbox_pb2.SETTING_SCOPE_GLOBAL


class UpdateKind(Enum):
    """What one UpdateConfig request asks for: exactly one of these."""

    POLICY = "policy"
    SETTING = "setting"
    MERGE = "merge"


def is_global(request: object) -> bool:
    """The ``global`` field of a request (a Python keyword, so not an attribute name)."""
    return bool(getattr(request, "global", False))


def classify_update(request: openshell_pb2.UpdateConfigRequest) -> UpdateKind:
    """Exactly one of policy, setting_key and merge_operations, else INVALID_ARGUMENT."""
    asked = [
        kind
        for kind, present in (
            (UpdateKind.POLICY, request.HasField("policy")),
            (UpdateKind.SETTING, bool(request.setting_key.strip())),
            (UpdateKind.MERGE, bool(request.merge_operations)),
        )
        if present
    ]
    if len(asked) != 1:
        raise InvalidArgument.single(
            "policy",
            "exactly one of policy, setting_key and merge_operations must be given "
            f"(got {len(asked)})",
        )
    kind = asked[0]
    if request.delete_setting and kind is not UpdateKind.SETTING:
        raise InvalidArgument.single(
            "delete_setting", "delete_setting applies to setting_key updates only"
        )
    if is_global(request) and kind is UpdateKind.MERGE:
        raise InvalidArgument.single(
            "merge_operations", "merge_operations are not supported for the global scope"
        )
    return kind


def require_registered(key: str, *, scope: str) -> None:
    """The key must be registered; ``policy`` is reserved (INVALID_ARGUMENT either way)."""
    if key == POLICY_KEY:
        raise InvalidArgument.single(
            "setting_key",
            f"setting_key {POLICY_KEY!r} is reserved: set the {scope} policy with the policy field",
        )
    if key not in REGISTERED_SETTINGS:
        known = ", ".join(sorted(REGISTERED_SETTINGS))
        raise InvalidArgument.single(
            "setting_key", f"setting_key {key!r} is not a registered setting (known: {known})"
        )


def checked_value(key: str, value: SettingValue | None) -> SettingValue:
    """A copy of ``value`` after checking it has the registered kind of ``key``."""
    if value is None or value.WhichOneof("value") is None:
        raise InvalidArgument.single("setting_value", "setting_value is required to set a key")
    expected = REGISTERED_SETTINGS[key]
    got = value.WhichOneof("value")
    if got != expected:
        raise InvalidArgument.single(
            "setting_value",
            f"setting {key!r} takes a {expected.removesuffix('_value')} value, "
            f"got {str(got).removesuffix('_value')}",
        )
    copied = SettingValue()
    copied.CopyFrom(value)
    return copied


def require_not_global(global_settings: GatewaySettings | None, key: str) -> None:
    """A key managed globally cannot be set or deleted per sandbox (FAILED_PRECONDITION)."""
    if global_settings is not None and key in global_settings.settings:
        raise FailedPrecondition(
            f"setting {key!r} is managed globally; delete the global setting first",
            "SETTING_MANAGED_GLOBALLY",
        )


def require_no_global_policy(global_settings: GatewaySettings | None) -> None:
    """Sandbox policy changes are refused while a global policy overrides every sandbox."""
    if global_settings is not None and global_settings.HasField("global_policy"):
        raise FailedPrecondition(
            "policy is managed globally; delete the global policy before changing a "
            "sandbox's policy",
            "POLICY_MANAGED_GLOBALLY",
        )


@dataclass
class SettingChange:
    """A set or delete of one key, as a mutation that remembers whether it changed anything.

    The store may call it once per CAS attempt; ``changed`` describes the latest call, the
    one whose result was written (or found equal, so nothing was written).
    """

    key: str
    value: SettingValue | None  # None: delete
    changed: bool = False

    def __call__(self, settings: Settings) -> Settings:
        self.changed = False
        current = settings.settings.get(self.key) if self.key in settings.settings else None
        if self.value is None:
            if current is None:
                return settings
            del settings.settings[self.key]
        else:
            if current is not None and current == self.value:
                return settings
            settings.settings[self.key].CopyFrom(self.value)
        settings.revision += 1
        self.changed = True
        return settings


def set_setting(key: str, value: SettingValue) -> SettingChange:
    return SettingChange(key, value)


def delete_setting(key: str) -> SettingChange:
    return SettingChange(key, None)


@dataclass
class GlobalPolicyChange:
    """Point the gateway settings at global policy revision ``version`` (or clear it).

    Monotonic: a lagging writer holding an older revision never replaces a newer one, so two
    racing global policy updates end on the higher version whatever order their writes land.
    """

    policy: sandbox_pb2.SandboxPolicy | None
    version: int = 0
    policy_hash: str = ""
    changed: bool = False
    cleared_version: int = 0
    """On a clear: the version the pointer held, so only revisions up to it are retired."""

    def __call__(self, settings: GatewaySettings) -> GatewaySettings:
        self.changed = False
        current = settings.global_policy if settings.HasField("global_policy") else None
        if self.policy is None:
            if current is None:
                return settings
            self.cleared_version = current.version
            settings.ClearField("global_policy")
        else:
            if current is not None and current.version >= self.version:
                return settings
            settings.global_policy.policy.CopyFrom(self.policy)
            settings.global_policy.version = self.version
            settings.global_policy.policy_hash = self.policy_hash
        settings.revision += 1
        self.changed = True
        return settings


def effective_settings(
    global_settings: GatewaySettings | None, sandbox_settings: SandboxSettings | None
) -> dict[str, EffectiveSetting]:
    """Every registered key with the value that applies and the scope it comes from.

    A global value wins over a sandbox value; a key set nowhere appears with no value and
    scope UNSPECIFIED, so a client sees every key it could set.
    """
    layers: list[tuple[Mapping[str, SettingValue], int]] = []
    if global_settings is not None:
        layers.append((global_settings.settings, SCOPE_GLOBAL))
    if sandbox_settings is not None:
        layers.append((sandbox_settings.settings, SCOPE_SANDBOX))
    effective: dict[str, EffectiveSetting] = {}
    for key in sorted(REGISTERED_SETTINGS):
        found = next(((values[key], scope) for values, scope in layers if key in values), None)
        effective[key] = (
            EffectiveSetting()
            if found is None
            else EffectiveSetting(value=found[0], scope=found[1])  # type: ignore[arg-type]
        )
    return effective


def global_settings_view(global_settings: GatewaySettings | None) -> dict[str, SettingValue]:
    """GetGatewayConfig's map: every registered key, with its global value or an empty value
    when none is set globally, so a client sees every key it could set. The policy is not a
    setting here (it has its own RPCs), and a stored key that is no longer registered is left
    out rather than shown with a type nobody checks any more."""
    stored = global_settings.settings if global_settings is not None else {}
    view: dict[str, SettingValue] = {}
    for key in sorted(REGISTERED_SETTINGS):
        value = SettingValue()
        if key in stored:
            value.CopyFrom(stored[key])
        view[key] = value
    return view


def config_revision(
    policy_hash: str, policy_source: int, settings: Mapping[str, EffectiveSetting]
) -> int:
    """A fingerprint of the effective config that changes whenever any part of it changes.

    Derived, never stored: every replica computes the same number from the same rows, so a
    supervisor polling any replica sees one value per configuration.
    """
    digest = hashlib.sha256()
    digest.update(f"{policy_source}|{policy_hash}".encode())
    for key in sorted(settings):
        digest.update(b"|" + key.encode() + b"=")
        digest.update(settings[key].SerializeToString(deterministic=True))
    return int.from_bytes(digest.digest()[:8], "big") >> 1
