"""Settings through UpdateConfig and GetSandboxConfig, on SQLite and Postgres.

Mirrors the reference gateway's settings tests (a stale save is detected and
never overwrites; concurrent updates of distinct keys end with revision == successes == keys)
and its rules: registered keys only, ``policy`` reserved, a global key cannot be
overridden per sandbox.
"""

from __future__ import annotations

import asyncio

import grpc

from shellgate.api import internal_pb2
from shellgate.reconcilers.settings import REGISTERED_SETTINGS
from shellgate.store.repositories import sandbox_settings_id
from tests.config.helpers import (
    P,
    S,
    bool_value,
    code_of,
    config,
    create_sandbox,
    current_state,
    failure,
    global_setting,
    setting,
)
from tests.support.gateway import Running
from tests.support.objects import raw_bump


async def test_set_and_read_a_sandbox_setting(gw: Running) -> None:
    await create_sandbox(gw, "alpha")
    response = await gw.stub.UpdateConfig(setting("alpha", "dummy_bool", bool_value(True)))
    assert response.settings_revision == 1 and not response.deleted
    effective = await config(gw, "alpha")
    assert effective.settings["dummy_bool"].value.bool_value is True
    assert effective.settings["dummy_bool"].scope == S.SETTING_SCOPE_SANDBOX
    assert effective.settings["ocsf_json_enabled"].scope == S.SETTING_SCOPE_UNSPECIFIED
    assert effective.settings_revision == 1


async def test_revision_moves_only_when_something_changed(gw: Running) -> None:
    sandbox = await create_sandbox(gw, "alpha")
    first = await gw.stub.UpdateConfig(setting("alpha", "dummy_int", S.SettingValue(int_value=3)))
    same = await gw.stub.UpdateConfig(setting("alpha", "dummy_int", S.SettingValue(int_value=3)))
    other = await gw.stub.UpdateConfig(setting("alpha", "dummy_int", S.SettingValue(int_value=4)))
    gone = await gw.stub.UpdateConfig(setting("alpha", "dummy_int", delete_setting=True))
    again = await gw.stub.UpdateConfig(setting("alpha", "dummy_int", delete_setting=True))
    revisions = [r.settings_revision for r in (first, same, other, gone, again)]
    assert revisions == [1, 1, 2, 3, 3]
    assert (gone.deleted, again.deleted) == (True, False)
    settings_id = sandbox_settings_id(sandbox.metadata.id)
    record = await gw.gateway.store.get("sandbox_settings", settings_id)
    assert record is not None and record.resource_version == 3  # one write per change


async def test_deleting_an_unset_key_creates_no_row(gw: Running) -> None:
    sandbox = await create_sandbox(gw, "alpha")
    response = await gw.stub.UpdateConfig(setting("alpha", "dummy_int", delete_setting=True))
    assert (response.settings_revision, response.deleted) == (0, False)
    settings_id = sandbox_settings_id(sandbox.metadata.id)
    assert await gw.gateway.store.get("sandbox_settings", settings_id) is None


async def test_unknown_key_wrong_type_and_reserved_key_are_invalid(gw: Running) -> None:
    await create_sandbox(gw, "alpha")
    cases = [
        setting("alpha", "no_such_key", bool_value(True)),
        setting("alpha", "dummy_int", bool_value(True)),
        setting("alpha", "dummy_bool"),
        setting("alpha", "policy", S.SettingValue(bytes_value=b"x")),
        global_setting("no_such_key", bool_value(True)),
        global_setting("policy", S.SettingValue(bytes_value=b"x")),
    ]
    for request in cases:
        assert await code_of(gw.stub.UpdateConfig(request)) == grpc.StatusCode.INVALID_ARGUMENT
    assert await gw.gateway.store.list_versions("sandbox_policy", "__global__") == []
    effective = await config(gw, "alpha")
    assert all(not s.HasField("value") for s in effective.settings.values())


async def test_exactly_one_change_per_request(gw: Running) -> None:
    await create_sandbox(gw, "alpha")
    both = setting("alpha", "dummy_bool", bool_value(True))
    both.policy.version = 1
    deleting_a_policy = P.UpdateConfigRequest(sandbox="alpha", delete_setting=True)
    deleting_a_policy.policy.version = 1
    for request in (both, setting("alpha", ""), deleting_a_policy):
        assert await code_of(gw.stub.UpdateConfig(request)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_missing_sandbox_is_not_found(gw: Running) -> None:
    request = setting("ghost", "dummy_bool", bool_value(True))
    assert await code_of(gw.stub.UpdateConfig(request)) == grpc.StatusCode.NOT_FOUND


async def test_global_key_wins_and_cannot_be_overridden(gw: Running) -> None:
    await create_sandbox(gw, "alpha")
    await gw.stub.UpdateConfig(setting("alpha", "dummy_bool", bool_value(False)))
    response = await gw.stub.UpdateConfig(global_setting("dummy_bool", bool_value(True)))
    assert response.settings_revision == 1
    effective = await config(gw, "alpha")
    assert effective.settings["dummy_bool"].value.bool_value is True
    assert effective.settings["dummy_bool"].scope == S.SETTING_SCOPE_GLOBAL
    for request in (
        setting("alpha", "dummy_bool", bool_value(False)),
        setting("alpha", "dummy_bool", delete_setting=True),
    ):
        error = await failure(gw.stub.UpdateConfig(request))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert current_state(error) == "SETTING_MANAGED_GLOBALLY"
    await gw.stub.UpdateConfig(global_setting("dummy_bool", delete_setting=True))
    restored = await config(gw, "alpha")
    assert restored.settings["dummy_bool"].scope == S.SETTING_SCOPE_SANDBOX
    assert restored.config_revision != effective.config_revision


async def test_a_stale_save_is_never_sent_again(gw: Running, store_url: str) -> None:
    """Another writer bumps the row between our decision and our write: the CAS fails, we
    read again and apply the change to the fresh row, so both changes survive."""
    sandbox = await create_sandbox(gw, "alpha")
    await gw.stub.UpdateConfig(setting("alpha", "dummy_bool", bool_value(True)))
    settings_id = sandbox_settings_id(sandbox.metadata.id)
    store = gw.gateway.store
    # The decision of a CAS attempt, between its read (or the row it remembers writing) and
    # its write: every path of update_message_cas goes through it.
    original = store._plan_cas  # type: ignore[attr-defined]
    bumped = False

    def decide_then_bump(message_type, object_type, id, *args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal bumped
        decided = original(message_type, object_type, id, *args, **kwargs)
        if id == settings_id and not bumped:
            bumped = True
            raw_bump(store_url, settings_id)
        return decided

    store._plan_cas = decide_then_bump  # type: ignore[attr-defined]
    try:
        response = await gw.stub.UpdateConfig(
            setting("alpha", "dummy_int", S.SettingValue(int_value=7))
        )
    finally:
        store._plan_cas = original  # type: ignore[attr-defined]
    assert bumped
    stored = await store.get_message(internal_pb2.SandboxSettings, settings_id)
    assert stored is not None
    assert set(stored.settings) == {"dummy_bool", "dummy_int"}
    assert stored.revision == response.settings_revision == 2
    assert stored.metadata.resource_version == 3  # create, the raw bump, our re-applied write


async def test_concurrent_updates_of_distinct_keys_count_exactly(
    gw: Running, second_store: object
) -> None:
    """Unlocked concurrent settings (as the reference tests them): all keys present, revision ==
    changes."""
    await create_sandbox(gw, "alpha")
    keys = [
        "providers_v2_enabled",
        "ocsf_json_enabled",
        "agent_policy_proposals_enabled",
        "dummy_bool",
    ]
    results = await asyncio.gather(
        *(gw.stub.UpdateConfig(setting("alpha", key, bool_value(True))) for key in keys),
        gw.stub.UpdateConfig(setting("alpha", "dummy_int", S.SettingValue(int_value=1))),
        return_exceptions=True,
    )
    ok = [r for r in results if not isinstance(r, BaseException)]
    assert len(ok) == len(keys) + 1, results
    effective = await config(gw, "alpha")
    assert all(s.scope == S.SETTING_SCOPE_SANDBOX for s in effective.settings.values())
    assert effective.settings_revision == len(ok)
    assert sorted(r.settings_revision for r in ok) == list(range(1, len(ok) + 1))


async def test_concurrent_global_updates_count_exactly(gw: Running) -> None:
    keys = [
        "providers_v2_enabled",
        "ocsf_json_enabled",
        "agent_policy_proposals_enabled",
        "dummy_bool",
    ]
    results = await asyncio.gather(
        *(gw.stub.UpdateConfig(global_setting(key, bool_value(False))) for key in keys)
    )
    assert sorted(r.settings_revision for r in results) == [1, 2, 3, 4]
    stored = await gw.gateway.repos.settings.load_gateway()
    assert stored is not None and stored.revision == 4 and set(stored.settings) == set(keys)


# --- GetGatewayConfig -------------------------------------------------------------------------


async def gateway_config(gw: Running) -> S.GetGatewayConfigResponse:
    return await gw.stub.GetGatewayConfig(S.GetGatewayConfigRequest())


async def test_gateway_config_shows_every_key_and_what_update_config_stored(
    gw: Running,
) -> None:
    empty = await gateway_config(gw)
    assert empty.settings_revision == 0
    assert sorted(empty.settings) == sorted(REGISTERED_SETTINGS)
    assert all(v.WhichOneof("value") is None for v in empty.settings.values())

    await gw.stub.UpdateConfig(global_setting("dummy_bool", bool_value(True)))
    await gw.stub.UpdateConfig(global_setting("dummy_int", S.SettingValue(int_value=7)))
    await create_sandbox(gw, "alpha")
    await gw.stub.UpdateConfig(setting("alpha", "ocsf_json_enabled", bool_value(True)))
    stored = await gateway_config(gw)
    assert stored.settings_revision == 2
    assert stored.settings["dummy_bool"].bool_value is True
    assert stored.settings["dummy_int"].int_value == 7
    # a sandbox's own setting is not a gateway setting
    assert stored.settings["ocsf_json_enabled"].WhichOneof("value") is None

    await gw.stub.UpdateConfig(global_setting("dummy_int", delete_setting=True))
    after = await gateway_config(gw)
    assert after.settings_revision == 3 and after.settings["dummy_int"].WhichOneof("value") is None


async def test_gateway_config_leaves_the_global_policy_out(gw: Running) -> None:
    request = P.UpdateConfigRequest(policy=S.SandboxPolicy(version=1), **{"global": True})
    await gw.stub.UpdateConfig(request)
    response = await gateway_config(gw)
    assert "policy" not in response.settings and response.settings_revision == 1
