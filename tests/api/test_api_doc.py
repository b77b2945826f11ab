"""docs/api.md lists every RPC of the service with whether shellgate serves it, and the list
agrees with the descriptor and the servicer; server reflection lists the same set."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from shellgate.api import openshell_pb2
from shellgate.controller.service.servicer import OpenShellService
from tests.support.gateway import Running

DOC = Path(__file__).parents[2] / "docs" / "api.md"
SERVICE = openshell_pb2.DESCRIPTOR.services_by_name["OpenShell"]
ROW = re.compile(r"^\| (\w+) \| (served|not served) \| (.*) \|$")


def documented_rows() -> list[tuple[str, str, str]]:
    text = DOC.read_text()
    section = text.split("### Every RPC of the service", 1)[1].split("\n## ", 1)[0]
    rows = [ROW.match(line) for line in section.splitlines()[1:]]
    return [(m.group(1), m.group(2), m.group(3)) for m in rows if m and m.group(1) != "RPC"]


def documented() -> dict[str, tuple[str, str]]:
    return {name: (state, why) for name, state, why in documented_rows()}


def served_by_servicer() -> set[str]:
    return {
        name
        for name in SERVICE.methods_by_name
        if name in vars(OpenShellService)
        and not getattr(vars(OpenShellService)[name], "not_served", False)
    }


def test_the_doc_lists_every_rpc_once_in_the_sdk_order() -> None:
    assert [name for name, _, _ in documented_rows()] == [m.name for m in SERVICE.methods]


def test_served_in_the_doc_is_served_by_the_servicer() -> None:
    doc = documented()
    assert {name for name, (state, _) in doc.items() if state == "served"} == served_by_servicer()


def test_every_unserved_rpc_says_why() -> None:
    reasons = {name: why for name, (state, why) in documented().items() if state == "not served"}
    assert all(len(why.strip()) > 10 for why in reasons.values()), reasons


async def test_reflection_lists_the_service_with_every_method(gw: Running) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(gw.channel)

    async def ask(
        request: reflection_pb2.ServerReflectionRequest,
    ) -> reflection_pb2.ServerReflectionResponse:
        call = stub.ServerReflectionInfo(iter([request]))
        async for response in call:
            return response
        raise AssertionError("no reflection answer")

    services = await ask(reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in services.list_services_response.service}
    assert "openshell.v1.OpenShell" in names
    files = await ask(
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="openshell.v1.OpenShell")
    )
    methods: set[str] = set()
    for raw in files.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        for service in proto.service:
            if f"{proto.package}.{service.name}" == "openshell.v1.OpenShell":
                methods = {m.name for m in service.method}
    assert methods == set(documented())


async def test_an_unserved_rpc_answers_unimplemented_with_its_reason(gw: Running) -> None:
    call = gw.channel.unary_unary("/openshell.v1.OpenShell/BeginRootfsTarStaging")
    try:
        await call(b"")
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "no image staging" in (error.details() or "")
    else:
        raise AssertionError("BeginRootfsTarStaging answered OK")
