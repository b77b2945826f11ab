"""merge_provider_update, redact_credentials and new_provider_for_create."""

from __future__ import annotations

import pytest

from shellgate.api import datamodel_pb2
from shellgate.reconcilers import (
    InvalidArgument,
    merge_provider_update,
    new_provider_for_create,
    redact_credentials,
)

from .helpers import copy_of, provider


def update(**kwargs: object) -> datamodel_pb2.Provider:
    """An incoming update: only what the client sends (name, maybe type, changed keys)."""
    incoming = datamodel_pb2.Provider(type=str(kwargs.pop("type_", "")))
    incoming.metadata.name = str(kwargs.pop("name", "gh"))
    incoming.credentials.update(kwargs.pop("credentials", {}))  # type: ignore[arg-type]
    incoming.config.update(kwargs.pop("config", {}))  # type: ignore[arg-type]
    incoming.metadata.labels.update(kwargs.pop("labels", {}))  # type: ignore[arg-type]
    assert not kwargs
    return incoming


EXISTING = provider(
    credentials={"TOKEN": "t1", "OTHER": "o1"},
    config={"url": "https://a", "org": "x"},
    labels={"team": "a"},
)


@pytest.mark.parametrize(
    ("incoming", "credentials", "config", "labels"),
    [
        pytest.param(
            update(),
            {"TOKEN": "t1", "OTHER": "o1"},
            {"url": "https://a", "org": "x"},
            {"team": "a"},
            id="empty maps: no change",
        ),
        pytest.param(
            update(credentials={"TOKEN": "t2"}),
            {"TOKEN": "t2", "OTHER": "o1"},
            {"url": "https://a", "org": "x"},
            {"team": "a"},
            id="credential replaced, others kept",
        ),
        pytest.param(
            update(credentials={"NEW": "n"}, config={"extra": "e"}),
            {"TOKEN": "t1", "OTHER": "o1", "NEW": "n"},
            {"url": "https://a", "org": "x", "extra": "e"},
            {"team": "a"},
            id="keys added",
        ),
        pytest.param(
            update(credentials={"OTHER": ""}, config={"org": "", "absent": ""}),
            {"TOKEN": "t1"},
            {"url": "https://a"},
            {"team": "a"},
            id="empty value deletes the key; deleting an absent key is fine",
        ),
        pytest.param(
            update(labels={"env": "prod"}),
            {"TOKEN": "t1", "OTHER": "o1"},
            {"url": "https://a", "org": "x"},
            {"env": "prod"},
            id="labels replaced when given",
        ),
        pytest.param(
            update(type_=" GitHub "),
            {"TOKEN": "t1", "OTHER": "o1"},
            {"url": "https://a", "org": "x"},
            {"team": "a"},
            id="same type, other case and spaces",
        ),
    ],
)
def test_merge(
    incoming: datamodel_pb2.Provider,
    credentials: dict[str, str],
    config: dict[str, str],
    labels: dict[str, str],
) -> None:
    existing = copy_of(EXISTING)
    candidate = merge_provider_update(existing, incoming)
    assert dict(candidate.credentials) == credentials
    assert dict(candidate.config) == config
    assert dict(candidate.metadata.labels) == labels
    assert candidate.type == "github"
    assert candidate.metadata.id == EXISTING.metadata.id
    assert candidate.metadata.resource_version == EXISTING.metadata.resource_version
    assert existing == EXISTING, "the existing message is not modified"


def test_empty_update_yields_an_equal_candidate() -> None:
    assert merge_provider_update(EXISTING, update()) == EXISTING


@pytest.mark.parametrize(
    ("incoming", "field", "text"),
    [
        pytest.param(
            update(type_="gitlab"), "provider.type", "cannot be changed", id="type change"
        ),
        pytest.param(update(name="other"), "provider.metadata.name", "does not match", id="name"),
        pytest.param(update(name=""), "provider.metadata.name", "is required", id="no name"),
        pytest.param(
            update(credentials={"TOKEN": "", "OTHER": ""}),
            "provider.credentials",
            "must not be empty",
            id="last credential deleted",
        ),
        pytest.param(
            update(credentials={f"K{i}": "v" for i in range(31)}),
            "provider.credentials",
            "exceeds maximum entries of 32",
            id="33 credentials",
        ),
        pytest.param(
            update(config={"url": "x" * 8193}),
            "provider.config",
            "value exceeds maximum length of 8192",
            id="config value too long",
        ),
        pytest.param(
            update(labels={"bad key": "v"}),
            "provider.metadata.labels",
            "'bad key'",
            id="invalid label",
        ),
    ],
)
def test_merge_rejects(incoming: datamodel_pb2.Provider, field: str, text: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        merge_provider_update(EXISTING, incoming)
    [violation] = raised.value.violations
    assert violation.field == field
    assert text in violation.description


def test_redact_keeps_keys_and_leaves_the_original_alone() -> None:
    original = copy_of(EXISTING)
    redacted = redact_credentials(original)
    assert dict(redacted.credentials) == {"TOKEN": "REDACTED", "OTHER": "REDACTED"}
    assert dict(redacted.config) == dict(EXISTING.config)
    assert original == EXISTING


@pytest.mark.parametrize(
    ("name", "workspace", "expected_name", "expected_workspace"),
    [
        pytest.param("", "", "random-name", "default", id="defaults"),
        pytest.param("gh", "team-a", "gh", "team-a", id="given values kept"),
    ],
)
def test_new_provider_for_create(
    name: str, workspace: str, expected_name: str, expected_workspace: str
) -> None:
    incoming = provider(name)
    incoming.metadata.id = "client-chosen"
    incoming.metadata.workspace = workspace
    created = new_provider_for_create(incoming, new_id="new-id", random_name="random-name")
    assert created.metadata.id == "new-id"
    assert created.metadata.name == expected_name
    assert created.metadata.workspace == expected_workspace
    assert created.metadata.resource_version == 0
    assert incoming.metadata.id == "client-chosen", "the request message is not modified"


@pytest.mark.parametrize(
    ("incoming", "field"),
    [
        pytest.param(provider(credentials={}), "provider.credentials", id="no credentials"),
        pytest.param(provider(type_=""), "provider.type", id="no type"),
        pytest.param(provider(type_="   "), "provider.type", id="blank type"),
        pytest.param(provider(type_="t" * 65), "provider.type", id="type too long"),
        pytest.param(provider(labels={"-x": "v"}), "provider.metadata.labels", id="bad label"),
    ],
)
def test_new_provider_for_create_validates(incoming: datamodel_pb2.Provider, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        new_provider_for_create(incoming, new_id="id", random_name="n")
    assert [v.field for v in raised.value.violations] == [field]
