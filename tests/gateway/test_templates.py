"""Sandbox templates through a real gRPC socket, on SQLite and Postgres: the four RPCs,
CreateSandbox from a template (the spec merges over it, the sandbox records which template
and version), and DeleteSandboxTemplate's guard against a concurrent create from the
template, forced through the repositories' hooks, with companions that remove each guard
and show the check then fails."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from shellgate.api import openshell_pb2
from shellgate.store.repositories import TEMPLATE_TYPE
from tests.config.helpers import failure
from tests.support.gateway import Running
from tests.support.hooks import Gate
from tests.support.unguard import (
    delete_at_current_version,
    fence_checks_existence_only,
    remove_fence,
)

P = openshell_pb2
Result = Any


def template(name: str, **workload: Any) -> P.SandboxWorkloadTemplate:
    made = P.SandboxWorkloadTemplate()
    made.metadata.name = name
    made.spec.workload.SetInParent()
    made.spec.workload.image = workload.get("image", "ghcr.io/example/base:1")
    made.spec.workload.environment.update(workload.get("environment", {"A": "template"}))
    made.spec.workload.resources.cpu = workload.get("cpu", "2")
    made.spec.workload.resources.memory = workload.get("memory", "1Gi")
    if "gpu" in workload:
        made.spec.workload.resources.gpu.count = workload["gpu"]
    if "driver_config" in workload:
        made.spec.driver_config.update(workload["driver_config"])
    return made


async def create_template(
    gw: Running, name: str = "base", **workload: Any
) -> P.SandboxWorkloadTemplate:
    request = P.CreateSandboxTemplateRequest(template=template(name, **workload))
    return (await gw.stub.CreateSandboxTemplate(request)).template


def from_template(
    name: str, tpl: str = "base", spec: P.SandboxSpec | None = None
) -> P.CreateSandboxRequest:
    return P.CreateSandboxRequest(name=name, spec=spec or P.SandboxSpec(), workload_template=tpl)


async def outcome(call: Awaitable[Any]) -> Result:
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        return error


def ok(result: Result) -> bool:
    return not isinstance(result, grpc.aio.AioRpcError)


# --- the four RPCs ----------------------------------------------------------------------------


async def test_create_get_list_delete(gw: Running) -> None:
    created = await create_template(gw)
    assert created.metadata.id and created.metadata.resource_version == 1
    assert created.metadata.workspace == "default" and created.metadata.created_time.seconds > 0
    got = (await gw.stub.GetSandboxTemplate(P.GetSandboxTemplateRequest(name="base"))).template
    assert got == created
    await create_template(gw, "other")
    listed = await gw.stub.ListSandboxTemplates(P.ListSandboxTemplatesRequest())
    assert [t.metadata.name for t in listed.templates] == ["base", "other"]
    deleted = await gw.stub.DeleteSandboxTemplate(P.DeleteSandboxTemplateRequest(name="base"))
    assert deleted.outcome == P.DELETION_OUTCOME_COMPLETED
    error = await failure(gw.stub.GetSandboxTemplate(P.GetSandboxTemplateRequest(name="base")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await failure(
        gw.stub.DeleteSandboxTemplate(P.DeleteSandboxTemplateRequest(name="base"))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    absent = await gw.stub.DeleteSandboxTemplate(
        P.DeleteSandboxTemplateRequest(name="base", allow_missing=True)
    )
    assert absent.outcome == P.DELETION_OUTCOME_ALREADY_ABSENT


async def test_duplicate_name_is_already_exists_and_workspaces_are_apart(gw: Running) -> None:
    await create_template(gw)
    error = await failure(create_template(gw))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    elsewhere = P.CreateSandboxTemplateRequest(template=template("base"))
    elsewhere.workspace_scope.workspace = "team"
    made = (await gw.stub.CreateSandboxTemplate(elsewhere)).template
    assert made.metadata.workspace == "team"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda t: setattr(t.metadata, "name", ""), "template.metadata.name"),
        (lambda t: setattr(t.metadata, "name", "Bad_Name"), "template.metadata.name"),
        (lambda t: t.spec.ClearField("workload"), "template.spec.workload"),
        (
            lambda t: t.spec.workload.environment.update({"A=B": "x"}),
            "template.spec.workload.environment",
        ),
        (lambda t: t.metadata.labels.update({"bad key!": "x"}), "template.metadata.labels"),
        (lambda t: setattr(t.spec.workload, "image", "x" * 2000), "template.spec.workload.image"),
    ],
)
async def test_invalid_templates_are_refused_with_nothing_stored(
    gw: Running, mutate: Callable[[P.SandboxWorkloadTemplate], None], field: str
) -> None:
    bad = template("base")
    mutate(bad)
    error = await failure(
        gw.stub.CreateSandboxTemplate(P.CreateSandboxTemplateRequest(template=bad))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.details()
    page = await gw.gateway.store.list(TEMPLATE_TYPE, workspace=None)
    assert list(page.records) == []


# --- CreateSandbox from a template ------------------------------------------------------------


async def test_spec_merges_over_the_template_and_provenance_is_recorded(gw: Running) -> None:
    tpl = await create_template(gw, gpu=1, driver_config={"node": "a", "zone": "z1"})
    spec = P.SandboxSpec(environment={"A": "request", "B": "request"})
    spec.template.driver_config.update({"zone": "z2"})
    spec.template.resources.update({"limits": {"memory": "4Gi"}})
    sandbox = (await gw.stub.CreateSandbox(from_template("alpha", spec=spec))).sandbox
    assert sandbox.spec.template.image == "ghcr.io/example/base:1"
    assert dict(sandbox.spec.environment) == {"A": "request", "B": "request"}
    assert json_format.MessageToDict(sandbox.spec.template.driver_config) == {
        "node": "a",
        "zone": "z2",
    }
    assert json_format.MessageToDict(sandbox.spec.template.resources) == {
        "requests": {"cpu": "2", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "4Gi"},
    }
    assert sandbox.spec.resource_requirements.gpu.count == 1
    provenance = sandbox.created_from_workload_template
    assert (provenance.name, provenance.resource_version) == ("base", "1")
    assert tpl.metadata.resource_version == 1
    stored = await gw.gateway.repos.sandboxes.find("alpha", "default")
    assert stored is not None and stored.created_from_workload_template == provenance


async def test_an_own_image_wins_and_an_absent_template_is_failed_precondition(gw: Running) -> None:
    await create_template(gw)
    spec = P.SandboxSpec()
    spec.template.image = "mine:2"
    sandbox = (await gw.stub.CreateSandbox(from_template("alpha", spec=spec))).sandbox
    assert sandbox.spec.template.image == "mine:2"
    error = await failure(gw.stub.CreateSandbox(from_template("beta", tpl="ghost")))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "sandbox template 'ghost' not found",
    )
    assert await gw.gateway.repos.sandboxes.find("beta", "default") is None


async def test_a_template_in_use_is_not_deleted(gw: Running) -> None:
    await create_template(gw)
    await gw.stub.CreateSandbox(from_template("alpha"))
    error = await failure(
        gw.stub.DeleteSandboxTemplate(P.DeleteSandboxTemplateRequest(name="base"))
    )
    assert (error.code(), error.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "sandbox template 'base' is in use by sandboxes: alpha",
    )
    assert await gw.gateway.repos.templates.find("base", "default") is not None


async def test_the_fence_fails_the_create_and_removes_its_row(gw: Running) -> None:
    """The template vanishes between the create's read and its fence: the create answers
    FAILED_PRECONDITION and leaves no sandbox behind."""
    await create_template(gw)
    gate = Gate()
    gw.gateway.repos.sandboxes.hooks.before_template_fence = gate
    creating = await gate.hold(outcome(gw.stub.CreateSandbox(from_template("alpha"))))
    record = await gw.gateway.store.get_by_name(TEMPLATE_TYPE, "base", "default")
    assert record is not None
    assert await gw.gateway.store.delete_if(TEMPLATE_TYPE, record.id, record.resource_version)
    gate.release()
    created = await creating
    assert not ok(created) and created.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await gw.gateway.repos.sandboxes.find("alpha", "default") is None


# --- delete-template versus create-from-template, forced --------------------------------------


@dataclass
class TemplateRace:
    creation: Result
    deletion: Result
    sandbox_from_template: bool
    template_exists: bool


async def observe(gw: Running, creation: Result, deletion: Result) -> TemplateRace:
    sandbox = await gw.gateway.repos.sandboxes.find("alpha", "default")
    built = sandbox is not None and sandbox.created_from_workload_template.name == "base"
    exists = await gw.gateway.repos.templates.find("base", "default") is not None
    return TemplateRace(creation, deletion, built, exists)


def check_no_sandbox_names_a_deleted_template(race: TemplateRace) -> None:
    for result in (race.creation, race.deletion):
        if not ok(result):
            assert result.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED)
    assert not (ok(race.creation) and ok(race.deletion)), "both the create and the delete"
    assert race.template_exists or not race.sandbox_from_template, "built from a deleted template"


async def create_inside_delete(gw: Running) -> TemplateRace:
    """DeleteSandboxTemplate scanned (no sandbox yet) and waits; a create from it completes."""
    await create_template(gw)
    gate = Gate()
    gw.gateway.repos.templates.hooks.after_reference_scan = gate
    deleting = await gate.hold(
        outcome(gw.stub.DeleteSandboxTemplate(P.DeleteSandboxTemplateRequest(name="base")))
    )
    created = await outcome(gw.stub.CreateSandbox(from_template("alpha")))
    assert ok(created), created
    gate.release()
    return await observe(gw, created, await deleting)


async def delete_inside_create(gw: Running) -> TemplateRace:
    """A create read the template and waits before its sandbox insert; the delete runs to
    completion (it finds no sandbox), then the create inserts and fences."""
    await create_template(gw)
    gate = Gate()
    gw.gateway.repos.sandboxes.hooks.before_create_write = gate
    creating = await gate.hold(outcome(gw.stub.CreateSandbox(from_template("alpha"))))
    deleted = await outcome(
        gw.stub.DeleteSandboxTemplate(P.DeleteSandboxTemplateRequest(name="base"))
    )
    gate.release()
    return await observe(gw, await creating, deleted)


TEMPLATE_RACES = {
    "create-inside-delete": create_inside_delete,
    "delete-inside-create": delete_inside_create,
}


@pytest.mark.parametrize("race", sorted(TEMPLATE_RACES))
async def test_forced_template_race_never_leaves_a_deleted_template_named(
    gw: Running, race: str
) -> None:
    check_no_sandbox_names_a_deleted_template(await TEMPLATE_RACES[race](gw))


def without_fence_write(gw: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fence checks the template exists but no longer moves its version."""
    fence_checks_existence_only(gw.gateway.repos.templates, TEMPLATE_TYPE, monkeypatch)


def without_fence(gw: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """No fence at all: nothing checks the template after the sandbox is written."""
    remove_fence(gw.gateway.repos.templates, monkeypatch)


def without_delete_version(gw: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """DeleteSandboxTemplate deletes at the version the row has now, not the one it read
    before scanning."""
    delete_at_current_version(gw.gateway.repos.templates, TEMPLATE_TYPE, monkeypatch)


Unguard = Callable[[Running, pytest.MonkeyPatch], None]
COMPANIONS: dict[str, tuple[str, Unguard]] = {
    "create-inside-delete/no-fence-write": ("create-inside-delete", without_fence_write),
    "create-inside-delete/no-delete-version": ("create-inside-delete", without_delete_version),
    "delete-inside-create/no-fence": ("delete-inside-create", without_fence),
}


@pytest.mark.parametrize("companion", sorted(COMPANIONS))
async def test_template_race_fails_without_its_guard(
    gw: Running, monkeypatch: pytest.MonkeyPatch, companion: str
) -> None:
    race, unguard = COMPANIONS[companion]
    unguard(gw, monkeypatch)
    result = await TEMPLATE_RACES[race](gw)
    with pytest.raises(AssertionError):
        check_no_sandbox_names_a_deleted_template(result)


async def test_many_creates_and_deletes_at_once_never_leave_a_dangling_provenance(
    gw: Running,
) -> None:
    """Unforced: four creates from the template and its delete, at once, three rounds."""
    for round_ in range(3):
        await create_template(gw)
        creates = [gw.stub.CreateSandbox(from_template(f"s{round_}-{i}")) for i in range(4)]
        delete = gw.stub.DeleteSandboxTemplate(P.DeleteSandboxTemplateRequest(name="base"))
        results = await asyncio.gather(*(outcome(c) for c in [*creates, delete]))
        built = [r.sandbox.metadata.id for r in results[:-1] if ok(r)]
        assert not (ok(results[-1]) and built), results
        for sandbox_id in built:
            await gw.gateway.remove_sandbox(sandbox_id)
        await gw.gateway.repos.templates.delete_unreferenced("base", "default")
