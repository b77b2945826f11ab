"""Hypothesis strategies for hostile OpenShell requests, built from the protobuf descriptors.

Every request message is generated from its descriptor, so a field added to the API is fuzzed
without touching this file. Field names steer the values where a random string would never
reach the interesting code: names come mostly from a small pool (so calls meet the objects
earlier calls created), selectors from a selector grammar, page tokens from real tokens,
mutated ones and known-bad ones. Every string can also be hostile: control characters, NUL,
other scripts, path traversal, or huge.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from shellgate.api import datamodel_pb2, openshell_pb2, sandbox_pb2

P = openshell_pb2
D = datamodel_pb2
S = sandbox_pb2

NAMES = ("alpha", "beta", "gamma-1", "p1", "p2", "default")
"""Valid names shared by creates and lookups, so most calls meet an existing object."""
WORKSPACES = ("", "default", "team-a", "b")
KIB = 1024
MIB = 1024 * KIB

# ----- strings ------------------------------------------------------------------------------

NASTY = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "A=B\x00",
    "a=b",
    "\n",
    "line\nforged: entry",
    "\r\n",
    "../../etc/passwd",
    "/etc/passwd",
    "%s%s%n",
    "${HOME}",
    "'; DROP TABLE objects; --",
    "\u202e\u200b",
    "\U0001f600" * 40,
    "\u0663\u0664",  # Arabic-Indic digits: str.isdecimal() takes them
    "é" * 300,
    "-",
    "-leading",
    "UPPER",
    "name.with.dots",
    "a" * 63,
    "a" * 64,
    "a" * 254,
    str(2**64),
    "9" * 5000,
    "-1",
)


def huge_strings() -> st.SearchStrategy[str]:
    """Strings of kilobytes to a few megabytes, built cheaply by repetition."""
    unit = st.sampled_from(["a", "\x00", "é", "\U0001f600", " ,", "k=v,", "ab\n"])
    size = st.sampled_from([1 * KIB, 9 * KIB, 70 * KIB, 300 * KIB, 1 * MIB, 5 * MIB])
    return st.builds(lambda u, n: u * (n // len(u.encode())), unit, size)


def small_text() -> st.SearchStrategy[str]:
    return st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


def hostile_strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(NASTY),
        small_text(),
        huge_strings(),
    )


def names() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(NAMES), st.sampled_from(NAMES), hostile_strings())


# ----- selectors and page tokens ------------------------------------------------------------


def _label_keys() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["app", "tier", "example.com/owner", "k", "a" * 63, "a" * 64]),
        small_text(),
    )


def _requirement() -> st.SearchStrategy[str]:
    key = _label_keys()
    value = st.one_of(st.sampled_from(["", "x", "web", "a" * 64]), small_text())
    values = st.lists(value, min_size=0, max_size=5).map(",".join)
    return st.one_of(
        st.builds(lambda k, op, v: f"{k}{op}{v}", key, st.sampled_from(["=", "==", "!="]), value),
        st.builds(
            lambda k, op, v: f"{k} {op} ({v})", key, st.sampled_from(["in", "notin"]), values
        ),
        key,
        key.map(lambda k: f"!{k}"),
    )


def selectors() -> st.SearchStrategy[str]:
    grammatical = st.lists(_requirement(), min_size=1, max_size=6).map(",".join)
    hostile = st.sampled_from(
        [
            " ," * 800_000,
            "k in (" + ",".join("v" * 3 for _ in range(40_000)) + ")",
            ",".join(f"k{n}=v" for n in range(1200)),
            "k" * 4000 + "=v",
            "(",
            "k in (",
            "k notin ()",
            "!",
            "==",
            "k=v=w",
            "k in (a b)",
        ]
    )
    return st.one_of(st.just(""), grammatical, hostile, hostile_strings())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


BAD_TOKENS = (
    _b64(b"[" * 100_000),
    "9" * 5000,
    str(2**64),
    "\u0663",
    "-1",
    "0",
    "!!!!",
    _b64(b"1|page|"),
    _b64(b"1|page|" + str(2**64).encode() + b"|x"),
    _b64(b"1|offset|-5"),
    _b64(b"1|version|99999999999999999999"),
    _b64(b"\xff\xfe"),
    _b64(b'{"a": [[[[[[]]]]]]}'),
    "A" * 10_000,
)


def page_tokens(seen: Callable[[], list[str]]) -> st.SearchStrategy[str]:
    """Empty, real (from earlier answers), a real one cut or extended, or known-bad."""

    def real(choice: int) -> str:
        tokens = seen()
        return tokens[choice % len(tokens)] if tokens else ""

    picked = st.integers(0, 1000).map(real)
    return st.one_of(
        st.just(""),
        picked,
        picked.map(lambda t: t[:-2]),
        picked.map(lambda t: t + "AA"),
        st.sampled_from(BAD_TOKENS),
        hostile_strings(),
    )


def page_sizes() -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from([0, 1, 2, -1, 1000, 1001, 2**31 - 1, -(2**31)]),
        st.integers(-(2**31), 2**31 - 1),
    )


# ----- Structs ------------------------------------------------------------------------------


def struct_values(max_leaves: int = 30) -> st.SearchStrategy[struct_pb2.Value]:
    leaf = st.one_of(
        st.builds(lambda: struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)),
        st.floats(allow_nan=True, allow_infinity=True).map(
            lambda f: struct_pb2.Value(number_value=f)
        ),
        st.booleans().map(lambda b: struct_pb2.Value(bool_value=b)),
        hostile_strings().map(lambda s: struct_pb2.Value(string_value=s)),
    )

    def extend(children: st.SearchStrategy[struct_pb2.Value]) -> st.SearchStrategy[Any]:
        as_list = st.lists(children, max_size=4).map(
            lambda items: struct_pb2.Value(list_value=struct_pb2.ListValue(values=items))
        )
        as_struct = st.dictionaries(small_text(), children, max_size=4).map(
            lambda fields: struct_pb2.Value(struct_value=struct_pb2.Struct(fields=fields))
        )
        return st.one_of(as_list, as_struct)

    return st.recursive(leaf, extend, max_leaves=max_leaves)


def deep_struct(depth: int) -> struct_pb2.Struct:
    """A Struct nesting ``depth`` levels (protobuf refuses to decode 100 or more)."""
    top = struct_pb2.Struct()
    inner = top
    for _ in range(depth):
        inner = inner.fields["k"].struct_value
    inner.fields["leaf"].string_value = "x"
    return top


def structs() -> st.SearchStrategy[struct_pb2.Struct]:
    shallow = st.dictionaries(small_text(), struct_values(), max_size=5).map(
        lambda fields: struct_pb2.Struct(fields=fields)
    )
    deep = st.sampled_from([5, 31, 32, 33, 60, 99, 120]).map(deep_struct)
    wide = st.integers(1, 20_000).map(
        lambda n: struct_pb2.Struct(
            fields={f"k{i}": struct_pb2.Value(number_value=i) for i in range(n)}
        )
    )
    return st.one_of(shallow, shallow, deep, wide)


# ----- messages from descriptors ------------------------------------------------------------

NAME_FIELDS = {
    "name",
    "sandbox",
    "sandbox_name",
    "provider",
    "provider_name",
    "workspace",
    "chunk_id",
    "id",
    "profile",
}
MAX_DEPTH = 4


class Messages:
    """Strategies for any message type; ``seen_tokens`` feeds the page-token strategy."""

    def __init__(self, seen_tokens: Callable[[], list[str]]) -> None:
        self._seen_tokens = seen_tokens
        self._cache: dict[tuple[str, int], st.SearchStrategy[Message]] = {}

    def of(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        key = (descriptor.full_name, depth)
        if key not in self._cache:
            self._cache[key] = st.deferred(lambda: self._build(descriptor, depth))
        return self._cache[key]

    def _build(self, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
        cls = GetMessageClass(descriptor)
        if descriptor.full_name == "google.protobuf.Struct":
            return structs()  # type: ignore[return-value]
        if descriptor.full_name == "google.protobuf.Value":
            return struct_values()  # type: ignore[return-value]
        if descriptor.full_name == "openshell.datamodel.v1.WorkspaceSelector":
            return workspace_selectors()  # type: ignore[return-value]
        fields = list(descriptor.fields)
        if depth >= MAX_DEPTH or not fields:
            return st.builds(cls)
        values = {f.name: self._field(f, depth) for f in fields}
        chosen = st.lists(st.sampled_from(fields), max_size=min(5, len(fields)), unique=True)

        @st.composite
        def build(draw: st.DrawFn) -> Message:
            message = cls()
            for field in draw(chosen):
                set_field(message, field, draw(values[field.name]))
            return message

        return build()

    def _field(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if _is_map(field):
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            sizes = st.sampled_from([3, 3, 3, 200])
            return sizes.flatmap(
                lambda n: st.dictionaries(
                    self._single(key_field, depth), self._single(value_field, depth), max_size=n
                )
            )
        single = self._single(field, depth)
        if field.is_repeated:
            return st.one_of(
                st.lists(single, max_size=4),
                st.tuples(single, st.integers(0, 5000)).map(lambda pair: copies(*pair)),
            )
        return single

    def _single(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        kind = field.type
        if kind == FieldDescriptor.TYPE_MESSAGE:
            return self.of(field.message_type, depth + 1)
        if kind == FieldDescriptor.TYPE_STRING:
            return self._string(field.name)
        if kind == FieldDescriptor.TYPE_BYTES:
            return st.one_of(st.binary(max_size=64), huge_strings().map(str.encode))
        if kind == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if kind == FieldDescriptor.TYPE_ENUM:
            return st.one_of(
                st.sampled_from([v.number for v in field.enum_type.values]),
                st.integers(-(2**31), 2**31 - 1),
            )
        if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            return st.floats(width=32 if kind == FieldDescriptor.TYPE_FLOAT else 64)
        if field.name == "page_size":
            return page_sizes()
        return st.integers(*_INT_RANGES.get(kind, (-(2**31), 2**31 - 1)))

    def _string(self, name: str) -> st.SearchStrategy[str]:
        if name == "label_selector":
            return selectors()
        if name == "page_token":
            return page_tokens(self._seen_tokens)
        if name in NAME_FIELDS or name.endswith("_name") or name.endswith("_id"):
            return names()
        if name == "setting_key" or name == "key":
            return st.one_of(st.sampled_from(["log_level", "policy", "x"]), hostile_strings())
        return hostile_strings()


_INT_RANGES = {
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
}


def copies(value: Any, count: int, budget: int = 6 * MIB) -> list[Any]:
    """``count`` copies of ``value``, fewer when they would pass ``budget`` bytes in all."""
    size = value.ByteSize() if isinstance(value, Message) else len(str(value).encode())
    return [value] * min(count, budget // max(size, 1))


def _is_map(field: FieldDescriptor) -> bool:
    return (
        field.type == FieldDescriptor.TYPE_MESSAGE
        and field.is_repeated
        and field.message_type.GetOptions().map_entry
    )


def set_field(message: Message, field: FieldDescriptor, value: Any) -> None:
    """Set one field of any kind (maps, repeated, sub-messages, scalars)."""
    target = getattr(message, field.name)
    if _is_map(field):
        value_field = field.message_type.fields_by_name["value"]
        for key, item in value.items():
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.is_repeated:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


def workspace_selectors() -> st.SearchStrategy[D.WorkspaceSelector]:
    return st.one_of(
        st.builds(D.WorkspaceSelector),
        st.sampled_from(WORKSPACES).map(lambda w: D.WorkspaceSelector(workspace=w)),
        st.just(D.WorkspaceSelector(all_workspaces=D.AllWorkspaces())),
        hostile_strings().map(lambda w: D.WorkspaceSelector(workspace=w)),
    )


# ----- requests that pass validation, to mutate ---------------------------------------------


def _policy() -> S.SandboxPolicy:
    made = S.SandboxPolicy(version=1)
    made.filesystem.read_only.append("/usr")
    made.filesystem.read_write.append("/tmp")
    return made


def _rule(host: str) -> S.NetworkPolicyRule:
    rule = S.NetworkPolicyRule(name="r", endpoints=[S.NetworkEndpoint(host=host, port=443)])
    rule.binaries.add(path="/usr/bin/curl")
    return rule


def create_sandbox(n: str, ws: D.WorkspaceSelector, with_policy: bool) -> P.CreateSandboxRequest:
    spec = P.SandboxSpec()
    spec.template.image = "busybox"
    if with_policy:
        spec.policy.CopyFrom(_policy())
    labels = {"app": "web", "tier": n}
    return P.CreateSandboxRequest(name=n, spec=spec, workspace_scope=ws, labels=labels)


def create_provider(n: str, ws: D.WorkspaceSelector) -> P.CreateProviderRequest:
    made = D.Provider(type="github", credentials={"TOKEN": "secret"})
    made.metadata.name = n
    return P.CreateProviderRequest(provider=made, workspace_scope=ws)


def create_template(n: str, ws: D.WorkspaceSelector) -> P.CreateSandboxTemplateRequest:
    made = P.SandboxWorkloadTemplate()
    made.metadata.name = n
    made.spec.workload.image = "busybox"
    made.spec.workload.environment["MODE"] = n
    return P.CreateSandboxTemplateRequest(template=made, workspace_scope=ws)


def create_from_template(n: str, ws: D.WorkspaceSelector, template: str) -> P.CreateSandboxRequest:
    return P.CreateSandboxRequest(
        name=f"{n}-from", spec=P.SandboxSpec(), workspace_scope=ws, workload_template=template
    )


def expose_service(n: str, ws: D.WorkspaceSelector, port: int) -> P.ExposeServiceRequest:
    return P.ExposeServiceRequest(sandbox=n, name="web", target_port=port, workspace_scope=ws)


def import_profile(n: str, ws: D.WorkspaceSelector) -> P.ImportProviderProfilesRequest:
    made = P.ProviderProfile(id=n, display_name=n)
    made.credentials.add(name="token", env_vars=["TOKEN"])
    item = P.ProviderProfileImportItem(profile=made, source=f"{n}.yaml")
    return P.ImportProviderProfilesRequest(profiles=[item], workspace_scope=ws)


def configure_refresh(n: str, ws: D.WorkspaceSelector) -> P.ConfigureProviderRefreshRequest:
    return P.ConfigureProviderRefreshRequest(
        provider=n,
        credential_key="TOKEN",
        strategy=P.PROVIDER_CREDENTIAL_REFRESH_STRATEGY_EXTERNAL,
        material={"token_url": "https://example.com/token"},
        workspace_scope=ws,
    )


def rotate_credential(
    n: str, ws: D.WorkspaceSelector, request: str
) -> P.RotateProviderCredentialRequest:
    return P.RotateProviderCredentialRequest(
        provider=n, credential_key="TOKEN", request_id=request, workspace_scope=ws
    )


def update_setting(n: str, ws: D.WorkspaceSelector, is_global: bool) -> P.UpdateConfigRequest:
    if is_global:
        request = P.UpdateConfigRequest(setting_key="log_level", **{"global": True})
    else:
        request = P.UpdateConfigRequest(sandbox=n, workspace_scope=ws, setting_key="log_level")
    request.setting_value.string_value = "debug"
    return request


def update_policy(n: str, ws: D.WorkspaceSelector) -> P.UpdateConfigRequest:
    return P.UpdateConfigRequest(sandbox=n, workspace_scope=ws, policy=_policy())


def submit_analysis(n: str, ws: D.WorkspaceSelector, host: str) -> P.SubmitPolicyAnalysisRequest:
    chunk = P.PolicyChunk(rule_name="r", proposed_rule=_rule(host), rationale="seen")
    return P.SubmitPolicyAnalysisRequest(name=n, workspace_scope=ws, proposed_chunks=[chunk])


def first_valid_requests() -> dict[str, Message]:
    """One request per method of ``valid_requests``, the same every run."""
    default = D.WorkspaceSelector()
    return {
        "CreateSandbox": create_sandbox(NAMES[0], default, True),
        "CreateProvider": create_provider(NAMES[0], default),
        "CreateSandboxTemplate": create_template(NAMES[0], default),
        "UpdateConfig": update_policy(NAMES[0], default),
        "SubmitPolicyAnalysis": submit_analysis(NAMES[0], default, "github.com"),
    }


def valid_requests() -> dict[str, st.SearchStrategy[Message]]:
    """Per method, requests that usually succeed: they create the objects later calls meet."""
    name = st.sampled_from(NAMES)
    workspace = st.sampled_from(WORKSPACES).map(lambda w: D.WorkspaceSelector(workspace=w))
    hosts = st.sampled_from(["github.com", "pypi.org", "example.com"])
    return {
        "CreateSandbox": st.one_of(
            st.builds(create_sandbox, name, workspace, st.booleans()),
            st.builds(create_from_template, name, workspace, name),
        ),
        "CreateSandboxTemplate": st.builds(create_template, name, workspace),
        "CreateProvider": st.builds(create_provider, name, workspace),
        "UpdateConfig": st.one_of(
            st.builds(update_setting, name, workspace, st.booleans()),
            st.builds(update_policy, name, workspace),
        ),
        "SubmitPolicyAnalysis": st.builds(submit_analysis, name, workspace, hosts),
    }
