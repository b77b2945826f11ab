"""kmock as the Kubernetes API for shellgate's tests (no real kube-apiserver runs here).

``SandboxEmulator`` is kmock's ``KubernetesEmulator`` with the core-group discovery fixed
(``/api/v1`` reported ``groupVersion: "/v1"``) and ``kind``/``apiVersion`` on list responses,
so kubectl works against it when debugging. ``serve_sandboxes`` registers what shellgate
needs in discovery: kmock's bundled core resources (kopf waits for ``v1/namespaces``) and
agent-sandbox ``sandboxes`` at the given versions. With a ``PodRuntime`` it also answers
``pods/exec`` and ``pods/log`` (tests/support/pod_runtime.py).

What kmock cannot do, and how the tests cope: it assigns no ``resourceVersion`` (tests set
one on every object they write), never answers 409 on a stale version (tests inject one with a
reaction), and answers a create with 200 (shellgate's client accepts any 2xx). Its watch could
lose a change made while a watcher connects; ``SandboxEmulator`` closes that gap. Helpers here
patch objects the way the agent-sandbox controller would, through the HTTP API so that
watchers see the change.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterable
from typing import Any

import attrs
from kmock import KubernetesEmulator, ResourceInfo
from kmock._internal import rendering

from shellgate.controller.drivers.kubernetes.manifest import object_name
from shellgate.store.records import DEFAULT_WORKSPACE
from tests.support.pod_runtime import PodRuntime

GROUP = "agents.x-k8s.io"
NAMESPACE = "sandboxes"
VERBS = {"list", "watch", "get", "patch", "create", "delete", "update"}


@attrs.define(kw_only=True)
class SandboxEmulator(KubernetesEmulator):
    """kmock's emulator with the discovery/list fixes Go clients need and a gap-free watch.

    With ``keep_requests=False`` a request is forgotten once answered. kmock matches every
    request against its reactions by walking all recorded requests, so a long-running server
    slows down quadratically; the standalone server asserts on no request and keeps only
    those in flight (a request must stay recorded until it has been matched).
    """

    keep_requests: bool = True
    pod_runtime: PodRuntime | None = None
    """Serves ``pods/exec`` and ``pods/log`` (which kmock lacks) when set."""

    async def __call__(self, raw_request: Any) -> Any:
        if self.pod_runtime is not None:
            answered = await self.pod_runtime.serve(raw_request)
            if answered is not None:
                return answered
        try:
            return await super().__call__(raw_request)
        finally:
            if not self.keep_requests:
                self._requests[:] = [r for r in self._requests if r._raw_request is not raw_request]

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        payload: Any = await super()._serve_version(request)
        payload["groupVersion"] = str(payload["groupVersion"]).lstrip("/")
        return payload  # type: ignore[no-any-return]

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        """kmock's watch without its gap: the snapshot and the event stream start together.

        kmock copies the existing objects under its lock and only then subscribes to the
        event bus; a change made in between (say, a test's POST while a watcher in another
        thread connects) is in neither and is lost for good. A real API server resumes from
        the listed resourceVersion and loses nothing, so here the bus position is marked
        under the same lock as the snapshot (every write publishes under that lock too).
        """
        yield b""  # send the headers at once, as kmock does
        assert request.resource is not None
        bus = self._buses[request.resource]
        async with self._lock:
            marker = await bus.mark()
            objects = self._KubernetesEmulator__get_objs(request, strict=False)
            existing = [{"type": "ADDED", "object": o.raw} for o in objects if not o.deleted]
        try:
            for event in existing:
                yield event
            async for event in bus.stream(since=marker):
                meta = event.get("object", {}).get("metadata", {})
                name, namespace = meta.get("name"), meta.get("namespace")
                if self._KubernetesEmulator__check(
                    request, request.resource, namespace, name, strict=False
                ):
                    yield event
        finally:
            await bus.unmark(marker)

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        payload: Any = await super()._serve_list(request)
        resource = request.resource
        if resource is not None and resource in self.resources:
            info = self.resources[resource]
            group_version = f"{resource.group}/{resource.version}".lstrip("/")
            payload.setdefault("apiVersion", group_version)
            payload.setdefault("kind", f"{info.kind or str(resource.plural).capitalize()}List")
        return payload  # type: ignore[no-any-return]


def resource_key(version: str = "v1beta1") -> str:
    return f"{GROUP}/{version}/sandboxes"


def serve_sandboxes(emulator: KubernetesEmulator, versions: Iterable[str] = ("v1beta1",)) -> None:
    """Discovery for kopf and the driver: core resources plus agent-sandbox ``sandboxes``."""
    emulator.resources.load_bundled()
    for version in versions:
        emulator.resources[resource_key(version)] = ResourceInfo(
            kind="Sandbox",
            singular="sandbox",
            shortnames={"sandbox"},
            namespaced=True,
            subresources={"status"},
            verbs=VERBS,
        )


def object_url(name: str, *, version: str = "v1beta1", namespace: str = NAMESPACE) -> str:
    return f"/apis/{GROUP}/{version}/namespaces/{namespace}/sandboxes/{name}"


def collection_url(*, version: str = "v1beta1", namespace: str = NAMESPACE) -> str:
    return f"/apis/{GROUP}/{version}/namespaces/{namespace}/sandboxes"


def condition(type_: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-05-01T10:00:00Z",
    }


def running_status(*, ready: bool = True, reason: str = "DependenciesReady") -> dict[str, Any]:
    """A status agent-sandbox reports while its pod runs (or is still getting ready)."""
    return {
        "conditions": [
            condition("Ready", "True" if ready else "False", reason),
            condition("Suspended", "False", "NotSuspended"),
            condition("PodScheduled", "True", "Scheduled"),
        ],
        "podIPs": ["10.0.0.7"],
        "nodeName": "node-a",
    }


def suspending_status() -> dict[str, Any]:
    return {
        "conditions": [
            condition("Ready", "False", "SandboxSuspended"),
            condition("Suspended", "False", "PodTerminating"),
        ],
        "podIPs": None,
        "nodeName": None,
    }


def suspended_status() -> dict[str, Any]:
    return {
        "conditions": [
            condition("Ready", "False", "SandboxSuspended"),
            condition("Suspended", "True", "PodTerminated"),
        ],
        "podIPs": None,
        "nodeName": None,
    }


class Revisions:
    """resourceVersions for a test to stamp on the objects it writes (kmock assigns none)."""

    def __init__(self, start: int = 100) -> None:
        self._next = itertools.count(start)
        self.last = ""

    def next(self) -> str:
        self.last = str(next(self._next))
        return self.last


def status_patch(status: dict[str, Any], revision: str) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": revision}, "status": status}


def k8s_name(name: str, workspace: str = DEFAULT_WORKSPACE) -> str:
    """The name of the ``Sandbox`` object the driver creates for sandbox ``name``."""
    return object_name(workspace, name)
