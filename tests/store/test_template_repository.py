"""TemplateRepository on SQLite and Postgres: MUST_CREATE, the fence, the version-bound
delete after the scan for sandboxes built from a template."""

from __future__ import annotations

import uuid

import pytest

from shellgate.api import openshell_pb2
from shellgate.store import Conflict, Store, UniqueViolation
from shellgate.store.repositories import (
    TEMPLATE_TYPE,
    TemplateInUse,
    TemplateMissing,
    TemplateRepository,
)
from tests.support.objects import sandbox

P = openshell_pb2


def template(name: str, workspace: str = "default") -> P.SandboxWorkloadTemplate:
    made = P.SandboxWorkloadTemplate()
    made.metadata.id = str(uuid.uuid4())
    made.metadata.name = name
    made.metadata.workspace = workspace
    made.spec.workload.image = "img"
    return made


@pytest.fixture
def repo(store: Store) -> TemplateRepository:
    return TemplateRepository(store)


async def test_create_is_must_create_per_workspace(repo: TemplateRepository) -> None:
    created = await repo.create(template("base"))
    assert created.metadata.resource_version == 1
    with pytest.raises(UniqueViolation):
        await repo.create(template("base"))
    assert (await repo.create(template("base", "team"))).metadata.workspace == "team"
    found = await repo.require("base", "default")
    assert found.metadata.id == created.metadata.id


async def test_the_fence_moves_the_version_and_finds_a_missing_template(
    repo: TemplateRepository,
) -> None:
    await repo.create(template("base"))
    await repo.fence("base", "default")
    await repo.fence("base", "default")
    assert (await repo.require("base", "default")).metadata.resource_version == 3
    with pytest.raises(TemplateMissing):
        await repo.fence("ghost", "default")
    with pytest.raises(TemplateMissing):
        await repo.require("ghost", "default")


async def test_delete_refuses_while_a_sandbox_was_built_from_it(
    store: Store, repo: TemplateRepository
) -> None:
    await repo.create(template("base"))
    built = sandbox("alpha")
    built.created_from_workload_template.name = "base"
    built.created_from_workload_template.resource_version = "1"
    created = await store.create_message(built)
    with pytest.raises(TemplateInUse) as caught:
        await repo.delete_unreferenced("base", "default")
    assert caught.value.sandboxes == ["alpha"]
    assert await store.delete_if("sandbox", created.metadata.id, 1)
    assert await repo.delete_unreferenced("base", "default") is True
    assert await repo.delete_unreferenced("base", "default") is False


async def test_a_fence_between_scan_and_delete_makes_the_delete_scan_again(
    repo: TemplateRepository,
) -> None:
    """Every attempt meets a fresh fence: the delete never deletes at a stale version."""
    await repo.create(template("base"))

    async def fence_meanwhile(_key: str) -> None:
        await repo.fence("base", "default")

    repo.hooks.after_reference_scan = fence_meanwhile
    with pytest.raises(Conflict):
        await repo.delete_unreferenced("base", "default")
    assert await repo.store.get_by_name(TEMPLATE_TYPE, "base", "default") is not None
