"""Render one .proto file of the openshell SDK from the descriptors the SDK ships.

The SDK publishes generated Python modules, not .proto sources. Each ``*_pb2.py`` carries
its file's serialized ``FileDescriptorProto``; this tool turns that back into .proto text
so shellgate's wire schema can declare the upstream service exactly (every method, every
message, every number) without anyone retyping it. The result is then checked field by
field against the SDK by tests/api/test_wire_schema.py, so a rendering mistake cannot
slip through.

Usage::

    python tools/render_sdk_proto.py openshell.proto > shellgate/api/openshell.proto
    make proto

Custom options are rendered through shellgate's own ``options.proto`` extensions, which
carry the same names and numbers as the SDK's.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

from google.protobuf import descriptor_pb2

from shellgate.api import options_pb2

FDP = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    FDP.TYPE_DOUBLE: "double",
    FDP.TYPE_FLOAT: "float",
    FDP.TYPE_INT64: "int64",
    FDP.TYPE_UINT64: "uint64",
    FDP.TYPE_INT32: "int32",
    FDP.TYPE_FIXED64: "fixed64",
    FDP.TYPE_FIXED32: "fixed32",
    FDP.TYPE_BOOL: "bool",
    FDP.TYPE_STRING: "string",
    FDP.TYPE_BYTES: "bytes",
    FDP.TYPE_UINT32: "uint32",
    FDP.TYPE_SFIXED32: "sfixed32",
    FDP.TYPE_SFIXED64: "sfixed64",
    FDP.TYPE_SINT32: "sint32",
    FDP.TYPE_SINT64: "sint64",
}
OUR_IMPORTS = {
    "datamodel.proto": "shellgate/api/datamodel.proto",
    "options.proto": "shellgate/api/options.proto",
    "sandbox.proto": "shellgate/api/sandbox.proto",
}
HEADER = """\
// Wire schema of the OpenShell gateway API, as served by shellgate.
//
// Rendered from {name} of the openshell Python SDK 0.1.5 by
// tools/render_sdk_proto.py: every method and message of the upstream file with
// its names, numbers and options. Methods shellgate does not serve answer
// UNIMPLEMENTED (docs/api.md lists which and why).
//
// Timestamps often sit at 100 + a reserved number (ObjectMeta.created_time = 103
// with 3 reserved): upstream replaced int64 *_ms fields by google.protobuf
// Timestamps under new numbers. Those numbers are the SDK's, not typos.
//
// tests/api/test_wire_schema.py checks this file against the SDK. Do not edit it
// by hand: rerun the tool, then `make proto`.
"""


def sdk_file(name: str) -> descriptor_pb2.FileDescriptorProto:
    """The SDK's descriptor for ``name``, read from its generated module's source."""
    spec = importlib.util.find_spec("openshell")
    assert spec is not None and spec.submodule_search_locations, "the openshell SDK is missing"
    proto_dir = Path(next(iter(spec.submodule_search_locations))) / "_proto"
    source = proto_dir / (name.removesuffix(".proto") + "_pb2.py")
    for node in ast.walk(ast.parse(source.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
        ):
            return descriptor_pb2.FileDescriptorProto.FromString(ast.literal_eval(node.args[0]))
    raise SystemExit(f"no serialized descriptor in {source}")


class Renderer:
    def __init__(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        self.file = file
        self.package = "." + file.package + "."

    def type_name(self, name: str) -> str:
        """A type reference, relative to our package when it is ours."""
        if name.startswith(self.package):
            return name[len(self.package) :]
        return name.lstrip(".")

    def render(self) -> str:
        lines = [HEADER.format(name=self.file.name), f'syntax = "{self.file.syntax}";', ""]
        lines.append(f"package {self.file.package};")
        lines.append("")
        for dependency in sorted(self.file.dependency, key=lambda d: OUR_IMPORTS.get(d, d)):
            lines.append(f'import "{OUR_IMPORTS.get(dependency, dependency)}";')
        for service in self.file.service:
            lines.append("")
            lines.extend(self.service(service))
        for enum in self.file.enum_type:
            lines.append("")
            lines.extend(self.enum(enum, ""))
        for message in self.file.message_type:
            lines.append("")
            lines.extend(self.message(message, ""))
        return "\n".join(lines) + "\n"

    def service(self, service: descriptor_pb2.ServiceDescriptorProto) -> Iterator[str]:
        yield f"service {service.name} {{"
        for method in service.method:
            request = ("stream " if method.client_streaming else "") + self.type_name(
                method.input_type
            )
            response = ("stream " if method.server_streaming else "") + self.type_name(
                method.output_type
            )
            head = f"  rpc {method.name}({request}) returns ({response})"
            rule = self.authorization(method.options)
            if rule:
                yield head + " {"
                yield f"    option (openshell.options.v1.authorization) = {{{rule}}};"
                yield "  }"
            else:
                yield head + ";"
        yield "}"

    @staticmethod
    def authorization(options: descriptor_pb2.MethodOptions) -> str:
        parsed = descriptor_pb2.MethodOptions.FromString(options.SerializeToString())
        if not parsed.HasExtension(options_pb2.authorization):
            return ""
        rule = parsed.Extensions[options_pb2.authorization]
        parts = [
            f'{field.name}: "{value}"'
            for field, value in rule.ListFields()  # in field-number order
        ]
        return " ".join(parts)

    def enum(self, enum: descriptor_pb2.EnumDescriptorProto, indent: str) -> Iterator[str]:
        yield f"{indent}enum {enum.name} {{"
        for value in enum.value:
            suffix = " [deprecated = true]" if value.options.deprecated else ""
            yield f"{indent}  {value.name} = {value.number}{suffix};"
        yield f"{indent}}}"

    def message(self, message: descriptor_pb2.DescriptorProto, indent: str) -> Iterator[str]:
        yield f"{indent}message {message.name} {{"
        inner = indent + "  "
        maps = {n.name: n for n in message.nested_type if n.options.map_entry}
        for reserved in message.reserved_range:
            yield f"{inner}reserved {self.range_text(reserved.start, reserved.end - 1)};"
        if message.reserved_name:
            yield inner + "reserved " + ", ".join(f'"{n}"' for n in message.reserved_name) + ";"
        for enum in message.enum_type:
            yield from self.enum(enum, inner)
        for nested in message.nested_type:
            if not nested.options.map_entry:
                yield from self.message(nested, inner)
        real_oneofs = self.real_oneofs(message)
        emitted: set[int] = set()
        for field in message.field:
            if field.HasField("oneof_index") and field.oneof_index in real_oneofs:
                if field.oneof_index in emitted:
                    continue
                emitted.add(field.oneof_index)
                yield f"{inner}oneof {message.oneof_decl[field.oneof_index].name} {{"
                for member in message.field:
                    if member.HasField("oneof_index") and member.oneof_index == field.oneof_index:
                        yield inner + "  " + self.field(member, maps, in_oneof=True)
                yield f"{inner}}}"
            else:
                yield inner + self.field(field, maps, in_oneof=False)
        yield f"{indent}}}"

    @staticmethod
    def real_oneofs(message: descriptor_pb2.DescriptorProto) -> set[int]:
        """Oneofs written in the source, not the synthetic ones of proto3 ``optional``."""
        synthetic = {f.oneof_index for f in message.field if f.proto3_optional}
        return {i for i in range(len(message.oneof_decl)) if i not in synthetic}

    @staticmethod
    def range_text(start: int, end: int) -> str:
        return str(start) if start == end else f"{start} to {end}"

    def field(
        self,
        field: descriptor_pb2.FieldDescriptorProto,
        maps: dict[str, descriptor_pb2.DescriptorProto],
        *,
        in_oneof: bool,
    ) -> str:
        kind = self.field_type(field)
        map_entry = maps.get(kind.rsplit(".", 1)[-1]) if field.type == FDP.TYPE_MESSAGE else None
        if map_entry is not None and field.label == FDP.LABEL_REPEATED:
            key, value = map_entry.field
            text = f"map<{self.field_type(key)}, {self.field_type(value)}> {field.name}"
        elif field.label == FDP.LABEL_REPEATED:
            text = f"repeated {kind} {field.name}"
        elif field.proto3_optional and not in_oneof:
            text = f"optional {kind} {field.name}"
        else:
            text = f"{kind} {field.name}"
        return f"{text} = {field.number}{self.field_options(field)};"

    def field_type(self, field: descriptor_pb2.FieldDescriptorProto) -> str:
        if field.type in SCALARS:
            return SCALARS[field.type]
        return self.type_name(field.type_name)

    @staticmethod
    def field_options(field: descriptor_pb2.FieldDescriptorProto) -> str:
        parsed = descriptor_pb2.FieldOptions.FromString(field.options.SerializeToString())
        options = []
        if parsed.deprecated:
            options.append("deprecated = true")
        if parsed.HasField("packed"):
            options.append(f"packed = {str(parsed.packed).lower()}")
        if parsed.HasExtension(options_pb2.secret):
            secret = str(parsed.Extensions[options_pb2.secret]).lower()
            options.append(f"(openshell.options.v1.secret) = {secret}")
        return f" [{', '.join(options)}]" if options else ""


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "openshell.proto"
    sys.stdout.write(Renderer(sdk_file(name)).render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
