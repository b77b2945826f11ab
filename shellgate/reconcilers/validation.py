"""Request limits and name rules, checked before any I/O and again on every CAS candidate.

Every limit of the reference gateway is a named constant here, and so is every bound shellgate
adds on top of them (object totals, names, commands), so the API, the reconcilers, the tests and
docs/api.md's limits table agree on one number. Lengths count UTF-8 bytes, as the
reference does (Rust ``str::len``): a limit that protects storage and Kubernetes objects is a
byte limit, not a character limit.

Validators return a list of ``FieldViolation`` (empty when valid) instead of raising, so one
response can report every problem at once; ``require_valid`` turns a non-empty list into
``InvalidArgument``. Within one map, each kind of problem (too many entries, a key too long, a
value too long) is reported once, so a hostile request cannot blow up the error response.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from shellgate.api import datamodel_pb2, openshell_pb2
from shellgate.reconcilers.annotations import RESERVED_ANNOTATION_KEYS
from shellgate.reconcilers.errors import FieldViolation, InvalidArgument

# --- the reference gateway's size limits -----------------------------------------------------

MAX_NAME_LEN = 253
"""Sandbox name, provider name, provider_name in attach/detach (bytes)."""
MAX_PROVIDERS = 32
"""Entries of spec.providers."""
MAX_LOG_LEVEL_LEN = 32
"""spec.log_level (bytes)."""
MAX_ENVIRONMENT_ENTRIES = 128
"""Entries of spec.environment."""
MAX_MAP_KEY_LEN = 256
"""Every validated string-map key (bytes)."""
MAX_MAP_VALUE_LEN = 8192
"""Every validated string-map value (bytes)."""
MAX_TEMPLATE_STRING_LEN = 1024
"""template.image, runtime_class_name, agent_socket (bytes)."""
MAX_TEMPLATE_MAP_ENTRIES = 128
"""Entries of template.labels, annotations, environment."""
MAX_TEMPLATE_STRUCT_SIZE = 65_536
"""Encoded size of template.resources and template.driver_config (bytes)."""
MAX_POLICY_SIZE = 262_144
"""Encoded size of spec.policy (bytes)."""
MAX_PROVIDER_TYPE_LEN = 64
"""provider.type (bytes)."""
MAX_PROVIDER_CREDENTIALS_ENTRIES = 32
"""Entries of provider.credentials."""
MAX_PROVIDER_CONFIG_ENTRIES = 64
"""Entries of provider.config."""
MAX_PAGE_SIZE = 1000
"""Largest page a list RPC returns."""
DEFAULT_PAGE_SIZE = 100
"""Page size used when the request says 0."""
MAX_LABEL_KEY_LEN = 253
"""Whole label key, prefix and '/' included (bytes)."""
MAX_LABEL_PREFIX_LEN = 253
"""DNS-subdomain prefix of a label key (bytes)."""
MAX_LABEL_NAME_LEN = 63
"""Name part of a label key (bytes)."""
MAX_LABEL_VALUE_LEN = 63
"""Label value (bytes)."""
MAX_SERVICE_NAME_LEN = 28
"""ExposeService service name."""
MAX_SERVICE_SANDBOX_NAME_LEN = 28
"""Sandbox name in ExposeService."""
MAX_EXEC_ARGS = 1024
"""Arguments of an exec command."""
MAX_EXEC_ARG_LEN = 32 * 1024
"""One exec argument (bytes)."""
MAX_EXEC_WORKDIR_LEN = 4096
"""Exec working directory (bytes)."""

# --- shellgate's bounds on exec and logs ------------------------------------------------------
MAX_EXEC_STDIN = 1024 * 1024
"""``stdin`` of one ExecSandbox request (bytes); more belongs in ExecSandboxInteractive."""
MAX_EXEC_TIMEOUT_SECONDS = 24 * 3600
"""``execution_timeout`` of one command."""
MAX_TERMINAL_SIZE = 4096
"""Terminal columns and rows (a window size is 16 bits per side in the kernel)."""
MAX_REQUEST_ID_LEN = 128
"""``request_id`` (bytes): it is logged, so it is short and printable."""
MAX_LOG_LINES = 5000
"""``lines`` of GetSandboxLogs (0 means ``DEFAULT_LOG_LINES``)."""
DEFAULT_LOG_LINES = 1000
"""Lines GetSandboxLogs answers when ``lines`` is 0."""
MAX_LOG_BYTES = 4 * 1024 * 1024
"""Message bytes in one GetSandboxLogs answer; the oldest selected lines go first."""
MAX_LOG_SOURCES = 8
"""Entries of ``sources`` in GetSandboxLogs."""

# Not in the reference's table: a later upstream revision caps client-supplied annotations at 128.
MAX_ANNOTATION_ENTRIES = 128
"""Entries of client-supplied metadata.annotations."""

# --- shellgate's bounds on whole objects and names ----------------------------------------------
# Each entry may be within its own limit while the object is huge (1 MiB of annotations in
# 128 values, a provider of 769 KiB): totals bound what one row, one list page and one
# response can cost.
MAX_ANNOTATIONS_TOTAL = 256 * 1024
"""Keys plus values of one map of annotations (bytes), as Kubernetes bounds them."""
MAX_ENVIRONMENT_TOTAL = 256 * 1024
"""Keys plus values of spec.environment (bytes): it becomes a process environment."""
MAX_COMMAND_ARGS = 1024
"""Arguments of spec.command."""
MAX_COMMAND_TOTAL = 128 * 1024
"""All arguments of spec.command together (bytes), well under the kernel's ARG_MAX."""
MAX_SANDBOX_SIZE = 1024 * 1024
"""A sandbox's encoded size (bytes)."""
MAX_PROVIDER_SIZE = 128 * 1024
"""A provider's encoded size (bytes), credentials and config included."""
MAX_WORKSPACE_LEN = 63
"""A workspace name: a DNS-1123 label."""

# --- name rules -------------------------------------------------------------------------------

_DNS1123_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(?:\.{_DNS1123_LABEL})*")
_DNS1123_LABEL_ONLY = re.compile(_DNS1123_LABEL)
_ENVIRONMENT_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_SHOWN_CHARS = 64


def _nbytes(text: str) -> int:
    """Length in UTF-8 bytes: the unit of every limit here."""
    return len(text.encode("utf-8"))


def _show(text: str) -> str:
    """Quote user input for a message, cut short so a huge key cannot bloat the error."""
    if len(text) <= _SHOWN_CHARS:
        return repr(text)
    return repr(text[:_SHOWN_CHARS]) + "..."


def _too_long(field: str, limit: int, actual: int) -> FieldViolation:
    """The one wording of a length violation, "<field> exceeds maximum length of N bytes"."""
    return FieldViolation(field, f"{field} exceeds maximum length of {limit} bytes (got {actual})")


def _too_many(field: str, limit: int, actual: int) -> FieldViolation:
    """The one wording of a count violation, "<field> exceeds maximum entries of N"."""
    return FieldViolation(field, f"{field} exceeds maximum entries of {limit} (got {actual})")


def require_valid(violations: Iterable[FieldViolation]) -> None:
    """Raise ``InvalidArgument`` carrying every violation, or return when there is none."""
    collected = list(violations)
    if collected:
        raise InvalidArgument(collected)


def is_dns1123_subdomain(name: str) -> bool:
    """Kubernetes object-name syntax: dot-separated parts of lowercase alphanumerics and '-',
    each starting and ending with an alphanumeric, at most 253 bytes in all."""
    return _nbytes(name) <= MAX_NAME_LEN and _DNS1123_SUBDOMAIN.fullmatch(name) is not None


def validate_max_len(value: str, field: str, limit: int) -> list[FieldViolation]:
    """One string against a byte limit."""
    size = _nbytes(value)
    return [_too_long(field, limit, size)] if size > limit else []


def validate_object_name(name: str, field: str) -> list[FieldViolation]:
    """The name of a sandbox or a provider, on every RPC that takes one: a DNS-1123 subdomain
    of at most 253 bytes.

    One rule for creates and lookups alike: the Kubernetes driver uses sandbox names as object
    names, provider names reach sandboxes' configuration, and a name like ``../../etc/passwd``
    or one with a newline (a forged log line) is refused wherever it arrives. An empty name
    is a violation; CreateSandbox replaces an empty request name with a generated one first.
    """
    if not name:
        return [FieldViolation(field, f"{field} is required")]
    too_long = validate_max_len(name, field, MAX_NAME_LEN)
    if too_long:
        return too_long
    if _DNS1123_SUBDOMAIN.fullmatch(name) is None:
        return [
            FieldViolation(
                field,
                f"{field} {_show(name)} must be a DNS-1123 subdomain: lowercase alphanumerics, "
                "'-' and '.', each part starting and ending with an alphanumeric",
            )
        ]
    return []


def validate_workspace(
    workspace: str, field: str = "workspace_scope.workspace"
) -> list[FieldViolation]:
    """A workspace name: a DNS-1123 label of at most 63 bytes (empty means "default")."""
    if not workspace:
        return []
    if _nbytes(workspace) > MAX_WORKSPACE_LEN:
        return [_too_long(field, MAX_WORKSPACE_LEN, _nbytes(workspace))]
    if _DNS1123_LABEL_ONLY.fullmatch(workspace) is None:
        return [
            FieldViolation(
                field,
                f"{field} {_show(workspace)} must be a DNS-1123 label: lowercase alphanumerics "
                "and '-', starting and ending with an alphanumeric",
            )
        ]
    return []


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a Kubernetes label key, or None when it is one.

    A key is an optional prefix and '/' and a name. The prefix is a DNS-1123 subdomain of at
    most 253 bytes; the name is 1-63 bytes of alphanumerics, '-', '_' and '.', starting and
    ending with an alphanumeric; the whole key is at most 253 bytes (Kubernetes' label-key rule).
    Only ASCII letters count as alphanumerics, as in Kubernetes itself.
    """
    if not key:
        return "must not be empty"
    if _nbytes(key) > MAX_LABEL_KEY_LEN:
        return f"must be at most {MAX_LABEL_KEY_LEN} bytes"
    head, slash, tail = key.partition("/")
    prefix, name = (head, tail) if slash else ("", key)
    if slash:
        if not prefix:
            return "has an empty prefix before '/'"
        if _nbytes(prefix) > MAX_LABEL_PREFIX_LEN or not _DNS1123_SUBDOMAIN.fullmatch(prefix):
            return (
                "has a prefix that is not a DNS-1123 subdomain (lowercase alphanumerics, "
                "'-' and '.', each part starting and ending with an alphanumeric)"
            )
    if not name:
        return "has an empty name"
    if _nbytes(name) > MAX_LABEL_NAME_LEN:
        return f"has a name longer than {MAX_LABEL_NAME_LEN} bytes"
    if _QUALIFIED_NAME.fullmatch(name) is None:
        return (
            "has a name that is not alphanumerics, '-', '_' and '.' "
            "starting and ending with an alphanumeric"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a Kubernetes label value, or None when it is one.

    A value is empty, or at most 63 bytes of alphanumerics, '-', '_' and '.', starting and
    ending with an alphanumeric.
    """
    if not value:
        return None
    if _nbytes(value) > MAX_LABEL_VALUE_LEN:
        return f"must be at most {MAX_LABEL_VALUE_LEN} bytes"
    if _QUALIFIED_NAME.fullmatch(value) is None:
        return "must be alphanumerics, '-', '_' and '.' starting and ending with an alphanumeric"
    return None


def validate_labels(labels: Mapping[str, str], field: str) -> list[FieldViolation]:
    """Every key and value of a label map against the Kubernetes rules.

    Labels are matched by selectors in SQL and copied onto Kubernetes objects, so they must
    be valid there too.
    """
    violations: list[FieldViolation] = []
    for key in sorted(labels):
        key_problem = label_key_problem(key)
        if key_problem is not None:
            violations.append(FieldViolation(field, f"{field} key {_show(key)} {key_problem}"))
        value_problem = label_value_problem(labels[key])
        if value_problem is not None:
            violations.append(
                FieldViolation(field, f"{field} value for key {_show(key)} {value_problem}")
            )
    return violations


def validate_string_map(
    values: Mapping[str, str],
    field: str,
    *,
    max_entries: int,
    max_key_len: int = MAX_MAP_KEY_LEN,
    max_value_len: int = MAX_MAP_VALUE_LEN,
) -> list[FieldViolation]:
    """Entry count, key and value sizes of a ``map<string, string>`` field.

    Reports each kind of problem once (naming the first offending key in sorted order), so
    the response stays small whatever the request holds.
    """
    violations: list[FieldViolation] = []
    if len(values) > max_entries:
        violations.append(_too_many(field, max_entries, len(values)))
    long_key = next((k for k in sorted(values) if _nbytes(k) > max_key_len), None)
    if long_key is not None:
        violations.append(
            FieldViolation(
                field,
                f"{field} key exceeds maximum length of {max_key_len} bytes "
                f"(got {_nbytes(long_key)})",
            )
        )
    long_value_key = next((k for k in sorted(values) if _nbytes(values[k]) > max_value_len), None)
    if long_value_key is not None:
        violations.append(
            FieldViolation(
                field,
                f"{field} value exceeds maximum length of {max_value_len} bytes "
                f"(key {_show(long_value_key)}, got {_nbytes(values[long_value_key])})",
            )
        )
    return violations


def validate_annotations(annotations: Mapping[str, str], field: str) -> list[FieldViolation]:
    """Client-supplied annotations: at most 128, label-key-shaped keys, values within the map
    value limit, and none of the keys that shellgate reserves for itself."""
    violations = validate_string_map(
        annotations, field, max_entries=MAX_ANNOTATION_ENTRIES, max_key_len=MAX_LABEL_KEY_LEN
    )
    for key in sorted(annotations):
        if _nbytes(key) > MAX_LABEL_KEY_LEN:
            continue  # already reported by validate_string_map
        problem = label_key_problem(key)
        if problem is not None:
            violations.append(FieldViolation(field, f"{field} key {_show(key)} {problem}"))
        elif key in RESERVED_ANNOTATION_KEYS:
            violations.append(
                FieldViolation(field, f"{field} key {key!r} is reserved for shellgate")
            )
    total = _total_bytes(annotations)
    if total > MAX_ANNOTATIONS_TOTAL:
        violations.append(_too_long(field, MAX_ANNOTATIONS_TOTAL, total))
    return violations


def _total_bytes(values: Mapping[str, str]) -> int:
    return sum(_nbytes(key) + _nbytes(value) for key, value in values.items())


def _has_nul(text: str) -> bool:
    return "\x00" in text


def validate_environment(environment: Mapping[str, str], field: str) -> list[FieldViolation]:
    """Variables a sandbox process gets: names a process environment can hold (no '=', no
    NUL, not empty), values without NUL, and at most 256 KiB in all. Checked here, before a
    driver sees them, so a bad entry is INVALID_ARGUMENT rather than a driver failure."""
    violations = validate_string_map(environment, field, max_entries=MAX_ENVIRONMENT_ENTRIES)
    violations += _environment_entries(environment, field)
    total = _total_bytes(environment)
    if total > MAX_ENVIRONMENT_TOTAL:
        violations.append(_too_long(field, MAX_ENVIRONMENT_TOTAL, total))
    return violations


def _environment_entries(values: Mapping[str, str], field: str) -> list[FieldViolation]:
    """Keys a process environment can hold, values without NUL; each problem once."""
    violations: list[FieldViolation] = []
    bad_key = next((k for k in sorted(values) if not _ENVIRONMENT_KEY.fullmatch(k)), None)
    if bad_key is not None:
        violations.append(
            FieldViolation(
                field,
                f"{field} key {_show(bad_key)} must be letters, digits, '_', '.' or '-', "
                "not starting with a digit",
            )
        )
    if any(_has_nul(value) for value in values.values()):
        violations.append(FieldViolation(field, f"{field} values must not contain NUL"))
    return violations


def validate_command(command: Iterable[str], field: str) -> list[FieldViolation]:
    """A command line: at most 1024 arguments and 128 KiB, no NUL, a non-empty program."""
    arguments = list(command)
    violations: list[FieldViolation] = []
    if len(arguments) > MAX_COMMAND_ARGS:
        violations.append(_too_many(field, MAX_COMMAND_ARGS, len(arguments)))
    total = sum(_nbytes(argument) for argument in arguments)
    if total > MAX_COMMAND_TOTAL:
        violations.append(_too_long(field, MAX_COMMAND_TOTAL, total))
    if arguments and not arguments[0]:
        violations.append(FieldViolation(field, f"{field} must name a program first"))
    if any(_has_nul(argument) for argument in arguments):
        violations.append(FieldViolation(field, f"{field} arguments must not contain NUL"))
    return violations


def validate_encoded_size(size: int, field: str, limit: int) -> list[FieldViolation]:
    """An encoded protobuf size against its limit."""
    if size <= limit:
        return []
    return [
        FieldViolation(
            field, f"{field} serialized size exceeds maximum of {limit} bytes (got {size})"
        )
    ]


def _validate_providers(providers: Iterable[str]) -> list[FieldViolation]:
    """spec.providers: at most 32 names, each one a valid lookup name."""
    names = list(providers)
    field = "spec.providers"
    violations: list[FieldViolation] = []
    if len(names) > MAX_PROVIDERS:
        violations.append(
            FieldViolation(
                field, f"{field} exceeds maximum of {MAX_PROVIDERS} providers (got {len(names)})"
            )
        )
    for name in names:
        violations.extend(validate_object_name(name, field))
    return violations


def _validate_template(template: openshell_pb2.SandboxTemplate) -> list[FieldViolation]:
    """Template strings, maps and Structs: what the driver copies onto Kubernetes objects."""
    violations: list[FieldViolation] = []
    for attr in ("image", "runtime_class_name", "agent_socket"):
        violations += validate_max_len(
            getattr(template, attr), f"spec.template.{attr}", MAX_TEMPLATE_STRING_LEN
        )
    maps = {
        "labels": template.labels,
        "annotations": template.annotations,
        "environment": template.environment,
    }
    for attr, values in maps.items():
        violations += validate_string_map(
            values, f"spec.template.{attr}", max_entries=MAX_TEMPLATE_MAP_ENTRIES
        )
    for attr in ("resources", "driver_config"):
        if template.HasField(attr):
            size = getattr(template, attr).ByteSize()
            violations += validate_encoded_size(
                size, f"spec.template.{attr}", MAX_TEMPLATE_STRUCT_SIZE
            )
    return violations


def validate_sandbox_spec(spec: openshell_pb2.SandboxSpec) -> list[FieldViolation]:
    """Every size and count limit of a sandbox spec (the reference's, so a spec one accepts
    the other accepts too).

    Runs on create and again on every attach/detach candidate (HEAD behaviour), so a spec
    can never be stored beyond the limits, whichever path wrote it. ``driver_config``, which
    replaced ``volume_claim_templates`` in the schema, gets the same Struct limit.
    """
    violations = _validate_providers(spec.providers)
    violations += validate_max_len(spec.log_level, "spec.log_level", MAX_LOG_LEVEL_LEN)
    violations += validate_environment(spec.environment, "spec.environment")
    violations += validate_command(spec.command, "spec.command")
    if spec.HasField("template"):
        violations += _validate_template(spec.template)
    if spec.HasField("policy"):
        violations += validate_encoded_size(spec.policy.ByteSize(), "spec.policy", MAX_POLICY_SIZE)
    return violations


def validate_sandbox_for_create(sandbox: openshell_pb2.Sandbox) -> list[FieldViolation]:
    """A sandbox about to be inserted: name, labels, annotations and spec.

    The spec is required (the reference answers INVALID_ARGUMENT without one). Field paths
    are relative to the ``Sandbox`` message the handler builds from the request.
    """
    violations = validate_object_name(sandbox.metadata.name, "metadata.name")
    violations += validate_labels(sandbox.metadata.labels, "metadata.labels")
    violations += validate_annotations(sandbox.metadata.annotations, "metadata.annotations")
    if not sandbox.HasField("spec"):
        violations.append(FieldViolation("spec", "spec is required"))
    else:
        violations += validate_sandbox_spec(sandbox.spec)
    return violations or validate_encoded_size(sandbox.ByteSize(), "sandbox", MAX_SANDBOX_SIZE)


def validate_provider(provider: datamodel_pb2.Provider) -> list[FieldViolation]:
    """A provider about to be stored (create, or the merged candidate of an update).

    Field paths start with ``provider.``: both CreateProviderRequest and UpdateProviderRequest
    carry the message in their ``provider`` field. A provider needs a type and at least one
    credential; that holds for an update's candidate too, so an update cannot delete the last
    credential.
    """
    violations = validate_object_name(provider.metadata.name, "provider.metadata.name")
    if not provider.type.strip():
        violations.append(FieldViolation("provider.type", "provider.type is required"))
    violations += validate_max_len(provider.type, "provider.type", MAX_PROVIDER_TYPE_LEN)
    if not provider.credentials:
        violations.append(
            FieldViolation("provider.credentials", "provider.credentials must not be empty")
        )
    violations += validate_environment_like_credentials(provider.credentials)
    violations += validate_string_map(
        provider.config, "provider.config", max_entries=MAX_PROVIDER_CONFIG_ENTRIES
    )
    violations += validate_labels(provider.metadata.labels, "provider.metadata.labels")
    return violations or validate_encoded_size(provider.ByteSize(), "provider", MAX_PROVIDER_SIZE)


def validate_environment_like_credentials(credentials: Mapping[str, str]) -> list[FieldViolation]:
    """Credentials are injected into sandboxes as environment variables: the same key and
    value rules as spec.environment, with the provider's entry limit."""
    field = "provider.credentials"
    violations = validate_string_map(
        credentials, field, max_entries=MAX_PROVIDER_CREDENTIALS_ENTRIES
    )
    return violations + _environment_entries(credentials, field)


def validate_page_size(page_size: int, field: str = "page_size") -> list[FieldViolation]:
    """A list request's page size: 0 (the default) up to 1000; negative is invalid."""
    if page_size < 0:
        return [FieldViolation(field, f"{field} must not be negative (got {page_size})")]
    if page_size > MAX_PAGE_SIZE:
        return [
            FieldViolation(field, f"{field} exceeds maximum of {MAX_PAGE_SIZE} (got {page_size})")
        ]
    return []


def effective_page_size(page_size: int, field: str = "page_size") -> int:
    """The page size to use: 0 becomes 100; an invalid size raises ``InvalidArgument``."""
    require_valid(validate_page_size(page_size, field))
    return page_size or DEFAULT_PAGE_SIZE


def validate_exec_command(command: Iterable[str], field: str = "command") -> list[FieldViolation]:
    """An exec command: non-empty, at most 1024 arguments of at most 32 KiB each and 128 KiB
    in all, a program first, no NUL."""
    arguments = list(command)
    if not arguments:
        return [FieldViolation(field, f"{field} must not be empty")]
    violations = validate_command(arguments, field)
    if len(arguments) > MAX_EXEC_ARGS:
        violations.append(_too_many(field, MAX_EXEC_ARGS, len(arguments)))
    longest = max(_nbytes(argument) for argument in arguments)
    if longest > MAX_EXEC_ARG_LEN:
        violations.append(_too_long(f"{field} argument", MAX_EXEC_ARG_LEN, longest))
    return violations


def validate_exec_environment(environment: Mapping[str, str], field: str) -> list[FieldViolation]:
    """Variables an exec adds: environment names, values of at most 32 KiB each (the SDK's
    ``exec_python`` passes the pickled function in one), 256 KiB in all."""
    violations: list[FieldViolation] = []
    if len(environment) > MAX_ENVIRONMENT_ENTRIES:
        violations.append(_too_many(field, MAX_ENVIRONMENT_ENTRIES, len(environment)))
    if any(_nbytes(key) > MAX_MAP_KEY_LEN for key in environment):
        violations.append(FieldViolation(field, f"{field} key exceeds maximum length"))
    if any(_nbytes(value) > MAX_EXEC_ARG_LEN for value in environment.values()):
        violations.append(_too_long(f"{field} value", MAX_EXEC_ARG_LEN, 0))
    total = _total_bytes(environment)
    if total > MAX_ENVIRONMENT_TOTAL:
        violations.append(_too_long(field, MAX_ENVIRONMENT_TOTAL, total))
    return violations + _environment_entries(environment, field)


def validate_exec_request(request: openshell_pb2.ExecSandboxRequest) -> list[FieldViolation]:
    """Everything of an ExecSandboxRequest but the sandbox's name (checked by the lookup)."""
    violations = validate_exec_command(request.command)
    violations += validate_exec_environment(request.environment, "environment")
    violations += validate_max_len(request.workdir, "workdir", MAX_EXEC_WORKDIR_LEN)
    if _has_nul(request.workdir):
        violations.append(FieldViolation("workdir", "workdir must not contain NUL"))
    if len(request.stdin) > MAX_EXEC_STDIN:
        violations.append(_too_long("stdin", MAX_EXEC_STDIN, len(request.stdin)))
    violations += validate_exec_timeout(request)
    violations += validate_window_size(request.cols, request.rows)
    violations += validate_max_len(request.request_id, "request_id", MAX_REQUEST_ID_LEN)
    if not request.request_id.isprintable():
        violations.append(FieldViolation("request_id", "request_id must be printable"))
    return violations


def validate_exec_timeout(request: openshell_pb2.ExecSandboxRequest) -> list[FieldViolation]:
    timeout = request.execution_timeout
    field = "execution_timeout"
    if timeout.seconds < 0 or timeout.nanos < 0:
        return [FieldViolation(field, f"{field} must not be negative")]
    if timeout.seconds > MAX_EXEC_TIMEOUT_SECONDS:
        return [
            FieldViolation(
                field,
                f"{field} exceeds maximum of {MAX_EXEC_TIMEOUT_SECONDS} s (got {timeout.seconds})",
            )
        ]
    return []


def validate_window_size(cols: int, rows: int) -> list[FieldViolation]:
    return [
        FieldViolation(name, f"{name} exceeds maximum of {MAX_TERMINAL_SIZE} (got {value})")
        for name, value in (("cols", cols), ("rows", rows))
        if value > MAX_TERMINAL_SIZE
    ]
