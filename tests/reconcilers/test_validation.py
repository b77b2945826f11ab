"""Every size and count limit (exactly at the limit passes, one over fails with the right field
path), the Kubernetes label and name rules, page sizes and the error types."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from shellgate.api import datamodel_pb2, openshell_pb2
from shellgate.reconcilers import (
    DEFAULT_PAGE_SIZE,
    DRIVER_REVISION_ANNOTATION,
    MAX_ANNOTATION_ENTRIES,
    MAX_ENVIRONMENT_ENTRIES,
    MAX_LABEL_KEY_LEN,
    MAX_LABEL_NAME_LEN,
    MAX_LABEL_VALUE_LEN,
    MAX_LOG_LEVEL_LEN,
    MAX_MAP_KEY_LEN,
    MAX_MAP_VALUE_LEN,
    MAX_NAME_LEN,
    MAX_PAGE_SIZE,
    MAX_POLICY_SIZE,
    MAX_PROVIDER_CONFIG_ENTRIES,
    MAX_PROVIDER_CREDENTIALS_ENTRIES,
    MAX_PROVIDER_TYPE_LEN,
    MAX_PROVIDERS,
    MAX_TEMPLATE_MAP_ENTRIES,
    MAX_TEMPLATE_STRING_LEN,
    MAX_TEMPLATE_STRUCT_SIZE,
    OWNER_REPLICA_ANNOTATION,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    effective_page_size,
    require_valid,
    validate_labels,
    validate_object_name,
    validate_page_size,
    validate_provider,
    validate_sandbox_for_create,
    validate_sandbox_spec,
)

from .helpers import fill_to, provider, sandbox

Sandbox = openshell_pb2.Sandbox


def test_limits_match_the_reference() -> None:
    assert (MAX_NAME_LEN, MAX_PROVIDERS, MAX_LOG_LEVEL_LEN, MAX_ENVIRONMENT_ENTRIES) == (
        253,
        32,
        32,
        128,
    )
    assert (MAX_MAP_KEY_LEN, MAX_MAP_VALUE_LEN) == (256, 8192)
    assert (MAX_TEMPLATE_STRING_LEN, MAX_TEMPLATE_MAP_ENTRIES) == (1024, 128)
    assert (MAX_TEMPLATE_STRUCT_SIZE, MAX_POLICY_SIZE) == (65_536, 262_144)
    assert (MAX_PROVIDER_TYPE_LEN, MAX_PROVIDER_CREDENTIALS_ENTRIES) == (64, 32)
    assert (MAX_PROVIDER_CONFIG_ENTRIES, MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE) == (64, 1000, 100)
    assert (MAX_LABEL_KEY_LEN, MAX_LABEL_NAME_LEN, MAX_LABEL_VALUE_LEN) == (253, 63, 63)


# --- sandbox limits ---------------------------------------------------------------------------


def with_sandbox(edit: Callable[[Sandbox, int], None]) -> Callable[[int], Sandbox]:
    def build(n: int) -> Sandbox:
        message = sandbox()
        edit(message, n)
        return message

    return build


def _struct(attr: str) -> Callable[[Sandbox, int], None]:
    """Set template.<attr> to a Struct whose encoded size is exactly n."""

    def edit(message: Sandbox, n: int) -> None:
        def size_of(length: int) -> int:
            getattr(message.spec.template, attr).fields["k"].string_value = "x" * length
            return int(getattr(message.spec.template, attr).ByteSize())

        size_of(fill_to(size_of, n))

    return edit


def _policy(message: Sandbox, n: int) -> None:
    def size_of(length: int) -> int:
        del message.spec.policy.filesystem.read_only[:]
        message.spec.policy.filesystem.read_only.append("x" * length)
        return message.spec.policy.ByteSize()

    size_of(fill_to(size_of, n))


def _label_key(n: int) -> str:
    """A valid label key of n bytes: a prefix, '/', and a 63-byte name."""
    return "a" * (n - 64) + "/" + "b" * 63


SANDBOX_LIMITS: list[tuple[str, str, int, Callable[[Sandbox, int], None]]] = [
    ("name", "metadata.name", 253, lambda m, n: setattr(m.metadata, "name", "a" * n)),
    (
        "providers count",
        "spec.providers",
        32,
        lambda m, n: m.spec.providers.extend(f"p{i}" for i in range(n)),
    ),
    ("provider name", "spec.providers", 253, lambda m, n: m.spec.providers.append("p" * n)),
    ("log_level", "spec.log_level", 32, lambda m, n: setattr(m.spec, "log_level", "x" * n)),
    (
        "log_level counts bytes",
        "spec.log_level",
        32,
        lambda m, n: setattr(m.spec, "log_level", "é" * (n // 2) + "x" * (n % 2)),
    ),
    (
        "environment entries",
        "spec.environment",
        128,
        lambda m, n: m.spec.environment.update({f"K{i}": "v" for i in range(n)}),
    ),
    (
        "environment key",
        "spec.environment",
        256,
        lambda m, n: m.spec.environment.update({"K" * n: "v"}),
    ),
    (
        "environment value",
        "spec.environment",
        8192,
        lambda m, n: m.spec.environment.update({"K": "v" * n}),
    ),
    *[
        (
            f"template {attr}",
            f"spec.template.{attr}",
            1024,
            lambda m, n, attr=attr: setattr(m.spec.template, attr, "x" * n),
        )
        for attr in ("image", "runtime_class_name", "agent_socket")
    ],
    *[
        (
            f"template {attr} entries",
            f"spec.template.{attr}",
            128,
            lambda m, n, attr=attr: getattr(m.spec.template, attr).update(
                {f"k{i}": "v" for i in range(n)}
            ),
        )
        for attr in ("labels", "annotations", "environment")
    ],
    (
        "template labels key",
        "spec.template.labels",
        256,
        lambda m, n: m.spec.template.labels.update({"k" * n: "v"}),
    ),
    (
        "template annotations value",
        "spec.template.annotations",
        8192,
        lambda m, n: m.spec.template.annotations.update({"k": "v" * n}),
    ),
    ("template resources size", "spec.template.resources", 65_536, _struct("resources")),
    (
        "template driver_config size",
        "spec.template.driver_config",
        65_536,
        _struct("driver_config"),
    ),
    ("policy size", "spec.policy", 262_144, _policy),
    (
        "label key",
        "metadata.labels",
        253,
        lambda m, n: m.metadata.labels.update({_label_key(n): "v"}),
    ),
    (
        "label key name part",
        "metadata.labels",
        63,
        lambda m, n: m.metadata.labels.update({"k" * n: "v"}),
    ),
    (
        "label value",
        "metadata.labels",
        63,
        lambda m, n: m.metadata.labels.update({"k": "v" * n}),
    ),
    (
        "annotation entries",
        "metadata.annotations",
        MAX_ANNOTATION_ENTRIES,
        lambda m, n: m.metadata.annotations.update({f"k{i}": "v" for i in range(n)}),
    ),
    (
        "annotation value",
        "metadata.annotations",
        8192,
        lambda m, n: m.metadata.annotations.update({"k": "v" * n}),
    ),
]


@pytest.mark.parametrize(
    ("field", "limit", "edit"),
    [pytest.param(f, lim, e, id=i) for i, f, lim, e in SANDBOX_LIMITS],
)
def test_sandbox_limit(field: str, limit: int, edit: Callable[[Sandbox, int], None]) -> None:
    build = with_sandbox(edit)
    assert validate_sandbox_for_create(build(limit)) == []
    violations = validate_sandbox_for_create(build(limit + 1))
    assert [v.field for v in violations] == [field]


def test_struct_and_policy_builders_hit_exact_sizes() -> None:
    message = with_sandbox(_struct("resources"))(MAX_TEMPLATE_STRUCT_SIZE)
    assert message.spec.template.resources.ByteSize() == MAX_TEMPLATE_STRUCT_SIZE
    message = with_sandbox(_policy)(MAX_POLICY_SIZE + 1)
    assert message.spec.policy.ByteSize() == MAX_POLICY_SIZE + 1


@pytest.mark.parametrize(
    ("edit", "text"),
    [
        pytest.param(
            lambda m: m.spec.providers.extend(f"p{i}" for i in range(33)),
            "spec.providers exceeds maximum of 32 providers (got 33)",
            id="providers",
        ),
        pytest.param(
            lambda m: setattr(m.spec, "log_level", "x" * 33),
            "spec.log_level exceeds maximum length of 32 bytes (got 33)",
            id="length",
        ),
        pytest.param(
            lambda m: m.spec.environment.update({f"K{i}": "v" for i in range(129)}),
            "spec.environment exceeds maximum entries of 128 (got 129)",
            id="entries",
        ),
        pytest.param(
            lambda m: m.spec.environment.update({"K" * 257: "v"}),
            "spec.environment key exceeds maximum length of 256 bytes (got 257)",
            id="key",
        ),
    ],
)
def test_messages_follow_the_reference_pattern(edit: Callable[[Sandbox], None], text: str) -> None:
    message = sandbox()
    edit(message)
    assert [v.description for v in validate_sandbox_spec(message.spec)] == [text]


def test_one_violation_per_problem_kind_per_map() -> None:
    message = sandbox()
    message.spec.environment.update({f"{i}" * 300: "v" * 9000 for i in range(200)})
    descriptions = [v.description for v in validate_sandbox_spec(message.spec)]
    # entries, key length, value length, key syntax, total size: each kind reported once
    assert len(descriptions) == 5
    assert all(len(d) < 200 for d in descriptions)


def test_create_requires_a_spec_and_reports_everything_at_once() -> None:
    message = sandbox(name="Bad_Name")
    message.metadata.labels["-bad"] = "v"
    message.ClearField("spec")
    fields = [v.field for v in validate_sandbox_for_create(message)]
    assert fields == ["metadata.name", "metadata.labels", "spec"]


def test_create_refuses_the_reserved_driver_revision_annotation() -> None:
    message = sandbox()
    message.metadata.annotations[DRIVER_REVISION_ANNOTATION] = "999999999"
    [violation] = validate_sandbox_for_create(message)
    assert violation.field == "metadata.annotations"
    assert "reserved" in violation.description


def test_create_refuses_the_reserved_owner_annotation() -> None:
    """A forged owner would make another replica's sweep keep its hands off the sandbox, or
    make a replica act on a process it does not run."""
    message = sandbox()
    message.metadata.annotations[OWNER_REPLICA_ANNOTATION] = "r9"
    [violation] = validate_sandbox_for_create(message)
    assert violation.field == "metadata.annotations"
    assert "reserved" in violation.description


def test_a_minimal_sandbox_is_valid() -> None:
    assert validate_sandbox_for_create(sandbox()) == []


# --- provider limits --------------------------------------------------------------------------

Provider = datamodel_pb2.Provider

PROVIDER_LIMITS: list[tuple[str, str, int, Callable[[int], Provider]]] = [
    ("name", "provider.metadata.name", 253, lambda n: provider("a" * n)),
    ("type", "provider.type", 64, lambda n: provider(type_="t" * n)),
    (
        "credentials entries",
        "provider.credentials",
        32,
        lambda n: provider(credentials={f"K{i}": "v" for i in range(n)}),
    ),
    (
        "credentials key",
        "provider.credentials",
        256,
        lambda n: provider(credentials={"K" * n: "v"}),
    ),
    (
        "credentials value",
        "provider.credentials",
        8192,
        lambda n: provider(credentials={"K": "v" * n}),
    ),
    (
        "config entries",
        "provider.config",
        64,
        lambda n: provider(config={f"k{i}": "v" for i in range(n)}),
    ),
    ("config key", "provider.config", 256, lambda n: provider(config={"k" * n: "v"})),
    ("config value", "provider.config", 8192, lambda n: provider(config={"k": "v" * n})),
    (
        "label value",
        "provider.metadata.labels",
        63,
        lambda n: provider(labels={"k": "v" * n}),
    ),
]


@pytest.mark.parametrize(
    ("field", "limit", "build"),
    [pytest.param(f, lim, b, id=i) for i, f, lim, b in PROVIDER_LIMITS],
)
def test_provider_limit(field: str, limit: int, build: Callable[[int], Provider]) -> None:
    assert validate_provider(build(limit)) == []
    assert [v.field for v in validate_provider(build(limit + 1))] == [field]


@pytest.mark.parametrize(
    ("message", "field"),
    [
        pytest.param(provider(""), "provider.metadata.name", id="no name"),
        pytest.param(provider(type_=""), "provider.type", id="no type"),
        pytest.param(provider(credentials={}), "provider.credentials", id="no credentials"),
    ],
)
def test_provider_required_fields(message: Provider, field: str) -> None:
    assert [v.field for v in validate_provider(message)] == [field]


# --- names and labels -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a", True),
        ("my-sandbox", True),
        ("0abc", True),
        ("a.b.c", True),
        ("a-1.b-2", True),
        ("a" * 253, True),
        ("", False),
        ("a" * 254, False),
        ("My-Sandbox", False),
        ("-a", False),
        ("a-", False),
        (".a", False),
        ("a.", False),
        ("a..b", False),
        ("a.-b", False),
        ("a_b", False),
        ("a b", False),
        ("a/b", False),
        ("é", False),
    ],
)
def test_sandbox_name_rule(name: str, ok: bool) -> None:
    violations = validate_object_name(name, "metadata.name")
    assert (violations == []) is ok
    assert all(v.field == "metadata.name" for v in violations)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("x", True),
        ("a" * 253, True),
        ("Any_Name with spaces", False),
        ("../../etc/passwd", False),
        ("a\nb", False),
        ("", False),
        ("a" * 254, False),
    ],
)
def test_one_name_rule_for_lookups_and_creates(name: str, ok: bool) -> None:
    assert (validate_object_name(name, "name") == []) is ok


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("app", True),
        ("A", True),
        ("app.kubernetes.io", True),
        ("a_b.c-d", True),
        ("example.com/app", True),
        ("openshell.ai/sandbox-id", True),
        ("x/y", True),
        ("a" * 63, True),
        ("", False),
        ("/app", False),
        ("example.com/", False),
        ("a/b/c", False),
        ("Example.com/app", False),
        ("ex..com/app", False),
        ("-ex.com/app", False),
        ("ex.com-/app", False),
        ("-app", False),
        ("app-", False),
        ("_app", False),
        ("app name", False),
        ("a" * 64, False),
        ("é", False),
    ],
)
def test_label_key_rule(key: str, ok: bool) -> None:
    violations = validate_labels({key: "v"}, "metadata.labels")
    assert (violations == []) is ok
    assert all(v.field == "metadata.labels" for v in violations)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("", True),
        ("v", True),
        ("v1.2_3-x", True),
        ("A" * 63, True),
        ("-v", False),
        ("v-", False),
        (".v", False),
        ("a b", False),
        ("a/b", False),
        ("A" * 64, False),
        ("é", False),
    ],
)
def test_label_value_rule(value: str, ok: bool) -> None:
    assert (validate_labels({"k": value}, "metadata.labels") == []) is ok


# --- page size --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "effective"),
    [(0, 100), (1, 1), (100, 100), (1000, 1000), (1001, None), (-1, None)],
)
def test_page_size(requested: int, effective: int | None) -> None:
    if effective is None:
        assert [v.field for v in validate_page_size(requested)] == ["page_size"]
        with pytest.raises(InvalidArgument):
            effective_page_size(requested)
    else:
        assert validate_page_size(requested) == []
        assert effective_page_size(requested) == effective


# --- errors -----------------------------------------------------------------------------------


def test_require_valid() -> None:
    require_valid([])
    violations = [FieldViolation("a", "a is bad"), FieldViolation("b", "b is bad")]
    with pytest.raises(InvalidArgument) as raised:
        require_valid(violations)
    assert raised.value.violations == tuple(violations)
    assert str(raised.value) == "a is bad; b is bad"


def test_invalid_argument_needs_a_violation() -> None:
    with pytest.raises(ValueError):
        InvalidArgument([])


def test_failed_precondition_carries_the_state() -> None:
    error = FailedPrecondition("cannot stop", "SANDBOX_PHASE_DELETING")
    assert (error.message, error.current_state, str(error)) == (
        "cannot stop",
        "SANDBOX_PHASE_DELETING",
        "cannot stop",
    )
