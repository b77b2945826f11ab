"""SQL pieces the two backends share: columns, and selectors compiled to bound clauses.

The backends differ only in placeholder style and in how labels are stored (TEXT JSON on
SQLite, JSONB on Postgres); ``SelectorCompiler`` hides both so each label requirement
becomes a clause whose keys and values are always parameters, never spliced text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shellgate.store.selectors import Operator, Requirement

COLUMNS = (
    "object_type, id, name, workspace, payload, labels, resource_version, "
    "created_at_ms, updated_at_ms, scope, version, status"
)


class SelectorCompiler:
    """Turns requirements into SQL with parameters; ``placeholder(n)`` names parameter n."""

    def __init__(self, dialect: str, placeholder: Callable[[int], str]) -> None:
        self._dialect = dialect
        self._placeholder = placeholder

    def compile(self, requirements: list[Requirement], params: list[Any]) -> list[str]:
        return [self._clause(requirement, params) for requirement in requirements]

    def _bind(self, params: list[Any], value: Any) -> str:
        params.append(value)
        return self._placeholder(len(params))

    def _clause(self, requirement: Requirement, params: list[Any]) -> str:
        key = self._bind(params, requirement.key)
        op = requirement.operator
        if op in (Operator.EXISTS, Operator.DOES_NOT_EXIST):
            test = self._has_key(key)
            return test if op is Operator.EXISTS else f"NOT {test}"
        values = [self._bind(params, value) for value in requirement.values]
        matches = self._value_in(key, values)
        return matches if op in (Operator.EQUALS, Operator.IN) else f"NOT {matches}"

    def _has_key(self, key: str) -> str:
        if self._dialect == "postgres":
            return f"jsonb_exists(labels, {key})"
        return f"EXISTS (SELECT 1 FROM json_each(objects.labels) WHERE key = {key})"

    def _value_in(self, key: str, values: list[str]) -> str:
        """True when the key is present with one of ``values`` (False when absent)."""
        listed = ", ".join(values)
        if self._dialect == "postgres":
            return f"COALESCE((labels ->> {key}) IN ({listed}), FALSE)"
        return (
            "EXISTS (SELECT 1 FROM json_each(objects.labels) "
            f"WHERE key = {key} AND value IN ({listed}))"
        )
