"""Small builders for test objects, and a raw version bump that bypasses the store."""

from __future__ import annotations

import sqlite3
import uuid

import psycopg

from shellgate.api import datamodel_pb2, openshell_pb2
from shellgate.store.records import DEFAULT_WORKSPACE


def sandbox(
    name: str | None = None,
    *,
    labels: dict[str, str] | None = None,
    workspace: str = DEFAULT_WORKSPACE,
    sandbox_id: str | None = None,
) -> openshell_pb2.Sandbox:
    message = openshell_pb2.Sandbox()
    message.metadata.id = sandbox_id or str(uuid.uuid4())
    message.metadata.name = name or f"sb-{uuid.uuid4().hex[:8]}"
    message.metadata.workspace = workspace
    message.metadata.labels.update(labels or {})
    message.status.phase = openshell_pb2.SANDBOX_PHASE_PROVISIONING
    return message


def provider(name: str, *, provider_type: str = "github") -> datamodel_pb2.Provider:
    message = datamodel_pb2.Provider()
    message.metadata.id = str(uuid.uuid4())
    message.metadata.name = name
    message.metadata.workspace = DEFAULT_WORKSPACE
    message.type = provider_type
    return message


def raw_bump(url: str, object_id: str) -> None:
    """A concurrent writer, outside the store under test: bump the row's version directly."""
    sql = "UPDATE objects SET resource_version = resource_version + 1 WHERE id = "
    if url.startswith("sqlite:"):
        with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=5) as conn:
            conn.execute(sql + "?", (object_id,))
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql + "%s", (object_id,))
