"""Our hand-written wire schema (shellgate/api/*.proto) matches the openshell SDK's.

The SDK's generated modules (openshell._proto.*_pb2) define the same full names
(openshell.v1.Sandbox, ...) as ours, and protobuf's default descriptor pool
refuses two files defining one symbol. So this test never imports the SDK
(`import openshell` alone would import its _proto modules): it reads the
serialized FileDescriptorProto bytes out of the SDK's _pb2.py source files and
loads them into a private DescriptorPool.

Every message, enum, extension and method we declare must exist in the SDK with
the same name, numbers, types, labels, type names, map-ness, oneof membership
and options. Every message must declare all of the SDK's fields unless it is
listed in PARTIAL_MESSAGES, and every enum all of the SDK's values.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    struct_pb2,
    timestamp_pb2,
)
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    FileDescriptor,
    MethodDescriptor,
)

from shellgate.api import datamodel_pb2, openshell_pb2, options_pb2, sandbox_pb2

SERVICE = "openshell.v1.OpenShell"

# Each of our files and the SDK file it mirrors (the SDK's files sit at the root
# of its proto path, ours under shellgate/api/).
OUR_FILES: dict[str, FileDescriptor] = {
    "options.proto": options_pb2.DESCRIPTOR,
    "datamodel.proto": datamodel_pb2.DESCRIPTOR,
    "sandbox.proto": sandbox_pb2.DESCRIPTOR,
    "openshell.proto": openshell_pb2.DESCRIPTOR,
}

REQUIRED_METHODS = (
    "Health",
    "CreateSandbox",
    "GetSandbox",
    "ListSandboxes",
    "DeleteSandbox",
    "StopSandbox",
    "StartSandbox",
    "WatchSandbox",
    "AttachSandboxProvider",
    "DetachSandboxProvider",
    "ListSandboxProviders",
    "CreateProvider",
    "GetProvider",
    "ListProviders",
    "UpdateProvider",
    "DeleteProvider",
    "UpdateConfig",
    "GetSandboxConfig",
    "ListSandboxPolicies",
    "GetSandboxPolicyStatus",
    "ReportPolicyStatus",
    "SubmitPolicyAnalysis",
    "GetDraftPolicy",
    "ApproveDraftChunk",
    "RejectDraftChunk",
    "ApproveAllDraftChunks",
    "EditDraftChunk",
    "UndoDraftChunk",
    "ClearDraftChunks",
    "GetDraftHistory",
)

# Messages that deliberately declare only some of the SDK's fields (protobuf
# keeps the others as unknown fields). Full name -> why. Never the Sandbox or
# Provider family: those must stay complete.
PARTIAL_MESSAGES: dict[str, str] = {}

MUST_BE_COMPLETE = (
    "openshell.datamodel.v1.ObjectMeta",
    "openshell.datamodel.v1.WorkspaceSelector",
    "openshell.datamodel.v1.Provider",
    "openshell.v1.Sandbox",
    "openshell.v1.SandboxSpec",
    "openshell.v1.SandboxStatus",
    "openshell.v1.SandboxCondition",
    "openshell.v1.SandboxTemplate",
    "openshell.v1.ProviderResponse",
)

_FDP = descriptor_pb2.FieldDescriptorProto


# --------------------------------------------------------------------------- SDK side


def _sdk_proto_dir() -> Path:
    # find_spec on a top-level name locates the package without executing it.
    spec = importlib.util.find_spec("openshell")
    assert spec is not None, "the openshell SDK is not installed (pip install -e '.[test]')"
    assert spec.submodule_search_locations, "openshell is not a package"
    return Path(next(iter(spec.submodule_search_locations))) / "_proto"


def _serialized_file(path: Path) -> bytes:
    """The bytes a generated _pb2.py passes to DescriptorPool.AddSerializedFile."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
        ):
            value = ast.literal_eval(node.args[0])
            assert isinstance(value, bytes)
            return value
    raise AssertionError(f"no AddSerializedFile(...) call in {path}")


@pytest.fixture(scope="module")
def sdk_pool() -> descriptor_pool.DescriptorPool:
    pending: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for path in sorted(_sdk_proto_dir().glob("*_pb2.py")):
        proto = descriptor_pb2.FileDescriptorProto.FromString(_serialized_file(path))
        pending[proto.name] = proto
    assert set(OUR_FILES) <= set(pending), f"SDK proto files: {sorted(pending)}"

    pool = descriptor_pool.DescriptorPool()
    loaded = set()
    for wkt in (descriptor_pb2, timestamp_pb2, struct_pb2, duration_pb2):
        pool.AddSerializedFile(wkt.DESCRIPTOR.serialized_pb)
        loaded.add(wkt.DESCRIPTOR.name)
    while pending:
        ready = [p for p in pending.values() if set(p.dependency) <= loaded]
        assert ready, f"unresolvable SDK imports: {[list(p.dependency) for p in pending.values()]}"
        for proto in ready:
            pool.Add(proto)
            loaded.add(proto.name)
            del pending[proto.name]

    assert "openshell._proto" not in sys.modules, (
        "the SDK's generated modules were imported into this process; they clash with "
        "shellgate.api in protobuf's default descriptor pool"
    )
    return pool


# --------------------------------------------------------------------------- our side


def _walk_messages(messages: Any) -> Iterator[Descriptor]:
    for message in messages:
        yield message
        yield from _walk_messages(message.nested_types)


def _our_messages() -> dict[str, Descriptor]:
    found = {}
    for file in OUR_FILES.values():
        for message in _walk_messages(file.message_types_by_name.values()):
            found[message.full_name] = message
    return found


def _our_enums() -> dict[str, EnumDescriptor]:
    found = {}
    for file in OUR_FILES.values():
        for enum in file.enum_types_by_name.values():
            found[enum.full_name] = enum
        for message in _walk_messages(file.message_types_by_name.values()):
            for enum in message.enum_types:
                found[enum.full_name] = enum
    return found


OUR_MESSAGES = _our_messages()
OUR_ENUMS = _our_enums()
OUR_SERVICE = openshell_pb2.DESCRIPTOR.services_by_name["OpenShell"]
OUR_METHODS = {m.name: m for m in OUR_SERVICE.methods}


# --------------------------------------------------------------------------- comparison


def _options(descriptor: Any) -> bytes:
    return bytes(descriptor.GetOptions().SerializeToString(deterministic=True))


def _field_shapes(message: Descriptor) -> dict[str, dict[str, Any]]:
    """Every field of a message, by name, as the attributes that make the wire schema."""
    proto = descriptor_pb2.DescriptorProto()
    message.CopyToProto(proto)
    shapes = {}
    for fp in proto.field:
        field: FieldDescriptor = message.fields_by_name[fp.name]
        shapes[fp.name] = {
            "number": fp.number,
            "type": _FDP.Type.Name(fp.type),
            "label": _FDP.Label.Name(fp.label),
            "type_name": fp.type_name,
            "map": bool(field.message_type and field.message_type.GetOptions().map_entry),
            "oneof": proto.oneof_decl[fp.oneof_index].name if fp.HasField("oneof_index") else None,
            "proto3_optional": fp.proto3_optional,
            "options": _options(field),
        }
    return shapes


def test_files_mirror_sdk_packages(sdk_pool: descriptor_pool.DescriptorPool) -> None:
    for sdk_name, ours in OUR_FILES.items():
        sdk = sdk_pool.FindFileByName(sdk_name)
        assert ours.name == f"shellgate/api/{sdk_name}"
        assert ours.package == sdk.package, sdk_name
        our_proto = descriptor_pb2.FileDescriptorProto.FromString(ours.serialized_pb)
        sdk_proto = descriptor_pb2.FileDescriptorProto()
        sdk.CopyToProto(sdk_proto)
        assert our_proto.syntax == sdk_proto.syntax == "proto3", sdk_name


@pytest.mark.parametrize("full_name", sorted(OUR_MESSAGES))
def test_message_matches_sdk(sdk_pool: descriptor_pool.DescriptorPool, full_name: str) -> None:
    ours = OUR_MESSAGES[full_name]
    try:
        sdk = sdk_pool.FindMessageTypeByName(full_name)
    except KeyError:
        pytest.fail(f"{full_name} is not a message of the SDK")
    assert ours.GetOptions().map_entry == sdk.GetOptions().map_entry

    our_fields = _field_shapes(ours)
    sdk_fields = _field_shapes(sdk)
    extra = sorted(set(our_fields) - set(sdk_fields))
    assert not extra, f"{full_name} declares fields the SDK lacks: {extra}"
    for name, shape in our_fields.items():
        assert shape == sdk_fields[name], f"{full_name}.{name}"

    missing = sorted(set(sdk_fields) - set(our_fields))
    if full_name in PARTIAL_MESSAGES:
        assert full_name not in MUST_BE_COMPLETE
        assert missing, f"{full_name} is complete: drop it from PARTIAL_MESSAGES"
    else:
        assert not missing, f"{full_name} lacks the SDK fields {missing}"


@pytest.mark.parametrize("full_name", sorted(OUR_ENUMS))
def test_enum_matches_sdk(sdk_pool: descriptor_pool.DescriptorPool, full_name: str) -> None:
    ours = OUR_ENUMS[full_name]
    try:
        sdk = sdk_pool.FindEnumTypeByName(full_name)
    except KeyError:
        pytest.fail(f"{full_name} is not an enum of the SDK")
    our_values = {v.name: (v.number, _options(v)) for v in ours.values}
    sdk_values = {v.name: (v.number, _options(v)) for v in sdk.values}
    assert our_values == sdk_values
    assert _options(ours) == _options(sdk)


def _full_name(descriptor: Descriptor | None) -> str | None:
    return descriptor.full_name if descriptor is not None else None


def test_extensions_match_sdk(sdk_pool: descriptor_pool.DescriptorPool) -> None:
    ours = options_pb2.DESCRIPTOR.extensions_by_name
    assert set(ours) == {"authorization", "secret"}
    for name, ext in ours.items():
        sdk = sdk_pool.FindExtensionByName(ext.full_name)
        assert ext.number == sdk.number, name
        assert ext.type == sdk.type, name
        assert _full_name(ext.containing_type) == _full_name(sdk.containing_type), name
        assert _full_name(ext.message_type) == _full_name(sdk.message_type), name


def test_service_declares_required_methods() -> None:
    assert OUR_SERVICE.full_name == SERVICE
    missing = [name for name in REQUIRED_METHODS if name not in OUR_METHODS]
    assert not missing, f"OpenShell lacks the methods {missing}"


@pytest.mark.parametrize("name", sorted(OUR_METHODS))
def test_method_matches_sdk(sdk_pool: descriptor_pool.DescriptorPool, name: str) -> None:
    sdk_service = sdk_pool.FindServiceByName(SERVICE)
    assert name in sdk_service.methods_by_name, f"the SDK's {SERVICE} has no method {name}"
    ours: MethodDescriptor = OUR_METHODS[name]
    sdk: MethodDescriptor = sdk_service.methods_by_name[name]
    assert ours.input_type.full_name == sdk.input_type.full_name
    assert ours.output_type.full_name == sdk.output_type.full_name
    assert ours.server_streaming == sdk.server_streaming
    assert ours.client_streaming == sdk.client_streaming
    assert _options(ours) == _options(sdk), "authorization rule differs"


def test_required_methods_exist_in_sdk(sdk_pool: descriptor_pool.DescriptorPool) -> None:
    # Guards the list above against typos: each name is a method of the SDK service.
    sdk_methods = sdk_pool.FindServiceByName(SERVICE).methods_by_name
    assert [name for name in REQUIRED_METHODS if name not in sdk_methods] == []


def test_sandbox_and_provider_families_are_declared() -> None:
    assert [name for name in MUST_BE_COMPLETE if name not in OUR_MESSAGES] == []
    assert not set(PARTIAL_MESSAGES) & set(MUST_BE_COMPLETE)
