"""Runs fuzzed calls against a real gateway and checks every answer and every row.

Per call: the status is never INTERNAL, UNKNOWN or (with a generous deadline) DEADLINE_EXCEEDED;
a refusal's trailers fit in the client's metadata limit and its message under 1 KiB; once
the reconcile loops are idle, a refused call has added, removed and changed no row. At the
end: the sandboxes and providers in the database are exactly those whose create answered OK
(less those whose delete answered OK), and every other row belongs to one of them or to the
gateway's global settings, written by a call that answered OK.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from shellgate.api import openshell_pb2
from shellgate.controller.service.servicer import OpenShellService
from shellgate.reconcilers.policy import GLOBAL_SCOPE
from shellgate.store import DEFAULT_WORKSPACE, ObjectRecord, Store, decode
from shellgate.store.messages import OBJECT_TYPES
from shellgate.store.repositories.settings import sandbox_settings_id
from tests.support.gateway import Running
from tests.support.status_size import CLIENT_METADATA_LIMIT, wire_bytes

P = openshell_pb2
SERVICE = P.DESCRIPTOR.services_by_name["OpenShell"]
PATH = "/openshell.v1.OpenShell/"
MAX_DETAILS = 1024
CALL_TIMEOUT = 60.0
"""Generous: a call that needs this long has blocked the gateway."""
WATCH_FIRST_EVENT = 0.5
RECEIVE_LIMIT = 4 * 1024 * 1024

FORBIDDEN = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}

SERVED = sorted(name for name in SERVICE.methods_by_name if name in vars(OpenShellService))
"""Every RPC the servicer defines; the rest answer UNIMPLEMENTED."""
UNSERVED = sorted(set(SERVICE.methods_by_name) - set(SERVED))
STREAMED_ANSWERS = {m for m in SERVED if SERVICE.methods_by_name[m].server_streaming}
"""WatchSandbox, ExecSandbox, ExecSandboxInteractive: judged by their first event."""
STREAMED_REQUESTS = {m for m in SERVED if SERVICE.methods_by_name[m].client_streaming}

ROW_CREATORS: dict[str, set[str]] = {
    "sandbox": {"CreateSandbox"},
    "provider": {"CreateProvider"},
    # A platform admin's create in a missing workspace makes the workspace.
    "workspace": {"CreateWorkspace", "CreateSandbox", "CreateProvider"},
    "workspace_member": {"AddWorkspaceMember"},
    "sandbox_template": {"CreateSandboxTemplate"},
    "service_endpoint": {"ExposeService"},
    "provider_profile": {"ImportProviderProfiles"},
    "provider_refresh": {"ConfigureProviderRefresh"},
    "provider_rotation": {"RotateProviderCredential"},
    "gateway_settings": {"UpdateConfig"},
    "sandbox_settings": {"UpdateConfig"},
    "draft_policy_chunk": {"SubmitPolicyAnalysis"},
    # A sandbox created with a policy records it as revision 1 on the first read that needs
    # it; approvals and policy updates add revisions.
    "sandbox_policy": {
        "UpdateConfig",
        "ApproveDraftChunk",
        "ApproveAllDraftChunks",
        "UndoDraftChunk",
        "EditDraftChunk",
        "GetSandboxConfig",
        "GetSandboxPolicyStatus",
        "ListSandboxPolicies",
        "ReportPolicyStatus",
        "GetDraftPolicy",
    },
}
UNSCOPED = {
    "sandbox",
    "provider",
    "gateway_settings",
    "workspace",
    "workspace_member",
    "sandbox_template",
    "provider_profile",
    # scoped to their provider, not to a sandbox
    "provider_refresh",
    "provider_rotation",
}


def request_class(method: str) -> type[Message]:
    return GetMessageClass(SERVICE.methods_by_name[method].input_type)  # type: ignore[no-any-return]


def response_class(method: str) -> type[Message]:
    return GetMessageClass(SERVICE.methods_by_name[method].output_type)  # type: ignore[no-any-return]


async def _one(message: Any) -> Any:
    """A request stream of one message, then the client's half-close."""
    yield message


@dataclass
class Answer:
    code: grpc.StatusCode
    details: str = ""
    trailer_bytes: int = 0
    response: Any = None


RowKey = tuple[str, str]


@dataclass(frozen=True)
class RowState:
    resource_version: int
    owner: str
    """The sandbox id the row belongs to (its own for a sandbox), or its scope."""


@dataclass
class Fuzzer:
    gw: Running
    store: Store
    seed: int
    tokens: list[str] = field(default_factory=list)
    rows: dict[RowKey, RowState] = field(default_factory=dict)
    sandboxes: dict[tuple[str, str], str] = field(default_factory=dict)
    providers: dict[tuple[str, str], str] = field(default_factory=dict)
    deleted_sandboxes: set[str] = field(default_factory=set)
    global_updates: int = 0
    codes: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)

    # ----- calling ----------------------------------------------------------------------

    async def call(self, method: str, request: Message) -> Answer:
        """One call through the gRPC stub, then every per-call check."""
        answer = await self._send(method, request)
        await self._check(method, request.ByteSize(), answer, request)
        return answer

    async def call_raw(self, method: str, payload: bytes) -> Answer:
        """Bytes sent as the request, on a generic channel (no client-side encoding)."""
        channel = self.gw.channel
        try:
            if method in STREAMED_REQUESTS:
                call = channel.stream_stream(PATH + method)(_one(payload))
                answer = await self._watch(call)
            elif method in STREAMED_ANSWERS:
                answer = await self._watch(channel.unary_stream(PATH + method)(payload))
            else:
                raw = await channel.unary_unary(PATH + method)(payload, timeout=CALL_TIMEOUT)
                answer = Answer(grpc.StatusCode.OK, response=response_class(method).FromString(raw))
        except grpc.aio.AioRpcError as error:
            answer = _refusal(error)
        await self._check(method, len(payload), answer, None)
        return answer

    async def _send(self, method: str, request: Message) -> Answer:
        rpc = getattr(self.gw.stub, method)
        try:
            if method in STREAMED_REQUESTS:
                return await self._watch(rpc(_one(request)))
            if method in STREAMED_ANSWERS:
                return await self._watch(rpc(request))
            return Answer(grpc.StatusCode.OK, response=await rpc(request, timeout=CALL_TIMEOUT))
        except grpc.aio.AioRpcError as error:
            return _refusal(error)

    async def _watch(self, stream: Any) -> Answer:
        """The first event or the refusal; a stream that stays open and quiet is fine."""
        try:
            first = await asyncio.wait_for(stream.read(), WATCH_FIRST_EVENT)
        except TimeoutError:
            stream.cancel()
            return Answer(grpc.StatusCode.OK)
        stream.cancel()
        if first is grpc.aio.EOF:
            return Answer(await stream.code())
        return Answer(grpc.StatusCode.OK, response=first)

    # ----- checks -----------------------------------------------------------------------

    def fail(self, message: str) -> None:
        self.failures.append(f"[seed {self.seed}] {message}")

    async def _check(self, method: str, size: int, answer: Answer, request: Message | None) -> None:
        self.codes[(method, answer.code.name)] += 1
        shown = _Shown(request, size)
        if answer.code in FORBIDDEN:
            self.fail(f"{method} answered {answer.code.name} {answer.details[:200]!r} to {shown}")
        if answer.code is grpc.StatusCode.RESOURCE_EXHAUSTED and size <= RECEIVE_LIMIT:
            self.fail(f"{method} RESOURCE_EXHAUSTED {answer.details[:200]!r} to {shown}")
        if answer.code is not grpc.StatusCode.OK:
            if answer.trailer_bytes >= CLIENT_METADATA_LIMIT:
                self.fail(f"{method}: {answer.trailer_bytes} bytes of trailers for {shown}")
            if len(answer.details.encode()) > MAX_DETAILS:
                self.fail(f"{method}: {len(answer.details.encode())} bytes of details")
        self._harvest_tokens(answer)
        await self._check_rows(method, answer, shown)
        if answer.code is grpc.StatusCode.OK and request is not None:
            self._update_model(method, request, answer)

    def _harvest_tokens(self, answer: Answer) -> None:
        token = getattr(answer.response, "next_page_token", "")
        if token and token not in self.tokens:
            self.tokens.append(token)

    async def _check_rows(self, method: str, answer: Answer, shown: object) -> None:
        await asyncio.wait_for(self.gw.loops.settled(), CALL_TIMEOUT)
        before, after = self.rows, await row_states(self.store)
        self.rows = after
        ok = answer.code is grpc.StatusCode.OK
        for key in after.keys() - before.keys():
            if not ok:
                self.fail(f"{method} answered {answer.code.name} but left row {key}: {shown}")
            elif method not in ROW_CREATORS.get(key[0], set()):
                self.fail(f"{method} created an unexpected row {key}")
        for key in before.keys() - after.keys():
            if not ok and before[key].owner not in self.deleted_sandboxes:
                self.fail(f"{method} answered {answer.code.name} but removed row {key}: {shown}")
        if ok:
            return
        for key in before.keys() & after.keys():
            changed = before[key].resource_version != after[key].resource_version
            if changed and key[0] != "sandbox":  # sandboxes move with the driver's events
                self.fail(f"{method} answered {answer.code.name} but changed row {key}: {shown}")

    def _update_model(self, method: str, request: Any, answer: Answer) -> None:
        response = answer.response
        if method == "CreateSandbox":
            meta = response.sandbox.metadata
            self.sandboxes[(meta.workspace, meta.name)] = meta.id
        elif method == "CreateProvider":
            meta = response.provider.metadata
            self.providers[(meta.workspace, meta.name)] = meta.id
        elif method == "DeleteSandbox":
            key = (_workspace(request), request.name)
            if key in self.sandboxes:
                self.deleted_sandboxes.add(self.sandboxes.pop(key))
        elif method == "UpdateConfig" and getattr(request, "global"):
            self.global_updates += 1
        elif method == "DeleteProvider":
            self.providers.pop((_workspace(request), request.name), None)

    # ----- the end ----------------------------------------------------------------------

    async def check_final_rows(self) -> None:
        """The database holds exactly what OK calls created, nothing of any refused call."""
        rows = await self._rows_after_deletions()
        by_type: dict[str, dict[tuple[str, str], str]] = collections.defaultdict(dict)
        for (kind, _), record in rows.items():
            by_type[kind][(record.workspace, record.name or "")] = record.id
        if by_type["sandbox"] != self.sandboxes:
            self.fail(f"sandboxes {sorted(by_type['sandbox'])} != created {sorted(self.sandboxes)}")
        if by_type["provider"] != self.providers:
            self.fail(
                f"providers {sorted(by_type['provider'])} != created {sorted(self.providers)}"
            )
        live = set(self.sandboxes.values())
        if self.global_updates:
            live.add(GLOBAL_SCOPE)
        for (kind, row_id), record in rows.items():
            if kind in UNSCOPED:
                continue
            if _sandbox_of(record) not in live:
                self.fail(f"row {kind}/{row_id} belongs to no live sandbox ({record.scope})")
        expected_kinds = {kind for kind, _ in self.codes_ok_creators()} | {"workspace"}
        # ("default" exists from the start)
        for kind, _ in rows:
            if kind not in expected_kinds:
                self.fail(f"a {kind} row exists, but no call that creates one answered OK")

    def codes_ok_creators(self) -> set[tuple[str, str]]:
        ok = {method for (method, code) in self.codes if code == "OK"}
        return {(kind, m) for kind, methods in ROW_CREATORS.items() for m in methods & ok}

    async def _rows_after_deletions(self) -> dict[RowKey, ObjectRecord]:
        """Deletions finish in the background (the driver confirms): wait for them."""
        for _ in range(100):
            await asyncio.wait_for(self.gw.loops.settled(), CALL_TIMEOUT)
            rows = await all_rows(self.store)
            if not any(_sandbox_of(r) in self.deleted_sandboxes for r in rows.values()):
                return rows
            await asyncio.sleep(0.1)
        return rows


async def all_rows(store: Store) -> dict[RowKey, ObjectRecord]:
    """Every row of every kind, across all workspaces, read from the store directly."""
    rows: dict[RowKey, ObjectRecord] = {}
    for kind in sorted(set(OBJECT_TYPES.values())):
        token = ""
        while True:
            page = await store.list(kind, workspace=None, limit=1000, page_token=token)
            rows.update({(kind, r.id): r for r in page.records})
            token = page.next_page_token
            if not token:
                break
    return rows


async def row_states(store: Store) -> dict[RowKey, RowState]:
    """Every row's version and owner, without its payload.

    Run after every call, so it reads three columns instead of listing (and decoding) every
    payload of every kind: the sandboxes alone may hold megabytes.
    """
    rows = await store._rows(  # type: ignore[attr-defined]
        "SELECT object_type, id, resource_version, scope FROM objects", (), read=True
    )
    settings_owner = {sandbox_settings_id(r[1]): r[1] for r in rows if r[0] == "sandbox"}
    states = {}
    for kind, row_id, version, scope in rows:
        owner = row_id if kind == "sandbox" else scope or settings_owner.get(row_id, "")
        states[(kind, row_id)] = RowState(int(version), owner)
    return states


def _sandbox_of(record: ObjectRecord) -> str:
    """The sandbox a row belongs to: its own id, its scope, or its payload's ``sandbox_id``."""
    if record.object_type == "sandbox":
        return record.id
    if record.scope:
        return record.scope
    full_name = next(name for name, kind in OBJECT_TYPES.items() if kind == record.object_type)
    message_type = GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(full_name))
    return str(getattr(decode(message_type, record), "sandbox_id", ""))


def _workspace(request: Any) -> str:
    selector = request.workspace_scope
    return selector.workspace or DEFAULT_WORKSPACE


def _refusal(error: grpc.aio.AioRpcError) -> Answer:
    return Answer(error.code(), error.details() or "", wire_bytes(error))


class _Shown:
    """A request as a failure message shows it, formatted only when a failure needs it."""

    def __init__(self, request: Message | None, size: int) -> None:
        self.request, self.size = request, size

    def __str__(self) -> str:
        if self.request is None:
            return f"raw frame of {self.size} bytes"
        text = str(self.request)
        return f"{type(self.request).__name__} of {self.size} bytes: {text[:300]!r}"
