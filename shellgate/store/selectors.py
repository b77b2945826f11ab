"""Kubernetes label selectors, parsed strictly.

Grammar (the subset of Kubernetes' own that label maps need)::

    selector    := requirement ("," requirement)*
    requirement := key ("=" | "==" | "!=") value
                 | key ("in" | "notin") "(" value ("," value)* ")"
                 | key | "!" key

Keys and values follow the Kubernetes rules (keys: optional DNS-subdomain prefix and "/",
then a 1-63 character name; values: empty or up to 63 characters). The parser never builds
SQL: the backends turn each ``Requirement`` into a clause with bound parameters only.

A selector arrives from any caller, so it is bounded before it is read and parsed in one
pass: at most ``MAX_SELECTOR_LENGTH`` characters, ``MAX_REQUIREMENTS`` requirements and
``MAX_SET_VALUES`` values in all. The bounds keep one request's parse time and the SQL it
becomes small (SQLite refuses expression trees of about a thousand terms, Postgres more than
32,767 parameters), and error messages quote at most a short prefix of what was sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from shellgate.store.errors import InvalidSelector, quoted

_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_TOKEN = re.compile(r"\s*(!=|==|=|\(|\)|,|!|[^\s!=(),]+)")
_TRAILING_SPACE = re.compile(r"\s*\Z")

MAX_KEY_LENGTH = 253
MAX_VALUE_LENGTH = 63
MAX_SELECTOR_LENGTH = 4096
MAX_REQUIREMENTS = 64
MAX_SET_VALUES = 256


class Operator(Enum):
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()


def label_key_error(key: str) -> str | None:
    """Why ``key`` is not a valid Kubernetes label key, or None when it is."""
    if not key:
        return "label key must not be empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"label key exceeds maximum length of {MAX_KEY_LENGTH}"
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"label key {quoted(key)} has an invalid prefix (a DNS subdomain is required)"
    if not _NAME.match(name):
        return (
            f"label key {quoted(key)} must be 1-63 characters of alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric"
        )
    return None


def label_value_error(value: str) -> str | None:
    """Why ``value`` is not a valid Kubernetes label value, or None when it is."""
    if value == "":
        return None
    if len(value) > MAX_VALUE_LENGTH:
        return f"label value exceeds maximum length of {MAX_VALUE_LENGTH}"
    if not _NAME.match(value):
        return (
            f"label value {quoted(value)} must be alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric"
        )
    return None


def parse_selector(text: str) -> list[Requirement]:
    """Parse ``text`` into requirements; an empty or blank selector selects everything."""
    if len(text) > MAX_SELECTOR_LENGTH:
        raise InvalidSelector(
            f"selector exceeds maximum length of {MAX_SELECTOR_LENGTH} characters "
            f"({len(text)} given)"
        )
    tokens = _tokenize(text)
    requirements: list[Requirement] = []
    position = 0
    while position < len(tokens):
        requirement, position = _parse_requirement(tokens, position, text)
        requirements.append(requirement)
        if position < len(tokens):
            if tokens[position] != ",":
                raise InvalidSelector(f"expected ',' after requirement in selector {quoted(text)}")
            position += 1
            if position == len(tokens):
                raise InvalidSelector(f"selector {quoted(text)} ends with ','")
    _check_counts(requirements)
    return requirements


def _check_counts(requirements: list[Requirement]) -> None:
    if len(requirements) > MAX_REQUIREMENTS:
        raise InvalidSelector(
            f"selector has {len(requirements)} requirements; the maximum is {MAX_REQUIREMENTS}"
        )
    values = sum(len(requirement.values) for requirement in requirements)
    if values > MAX_SET_VALUES:
        raise InvalidSelector(f"selector has {values} values; the maximum is {MAX_SET_VALUES}")


def _tokenize(text: str) -> list[str]:
    """One left-to-right pass: each match starts where the last ended, nothing is copied."""
    tokens: list[str] = []
    position = 0
    while not _TRAILING_SPACE.match(text, position):
        match = _TOKEN.match(text, position)
        if not match:
            raise InvalidSelector(f"cannot parse selector {quoted(text)} at offset {position}")
        tokens.append(match.group(1))
        position = match.end()
    return tokens


def _parse_requirement(tokens: list[str], position: int, text: str) -> tuple[Requirement, int]:
    if tokens[position] == "!":
        key = _expect_word(tokens, position + 1, text)
        _check_key(key)
        return Requirement(key, Operator.DOES_NOT_EXIST), position + 2
    key = _expect_word(tokens, position, text)
    _check_key(key)
    position += 1
    if position == len(tokens) or tokens[position] == ",":
        return Requirement(key, Operator.EXISTS), position
    operator = tokens[position]
    if operator in ("=", "==", "!="):
        value = tokens[position + 1] if position + 1 < len(tokens) else ""
        if value in (",", "(", ")", "!", "=", "==", "!="):
            value = ""
            consumed = 1
        else:
            consumed = 2 if position + 1 < len(tokens) else 1
        _check_value(value)
        op = Operator.NOT_EQUALS if operator == "!=" else Operator.EQUALS
        return Requirement(key, op, (value,)), position + consumed
    if operator in ("in", "notin"):
        values, position = _parse_set(tokens, position + 1, text)
        op = Operator.IN if operator == "in" else Operator.NOT_IN
        return Requirement(key, op, values), position
    raise InvalidSelector(f"unknown operator {quoted(operator)} in selector {quoted(text)}")


def _parse_set(tokens: list[str], position: int, text: str) -> tuple[tuple[str, ...], int]:
    if position >= len(tokens) or tokens[position] != "(":
        raise InvalidSelector(f"expected '(' after set operator in selector {quoted(text)}")
    position += 1
    values: list[str] = []
    while True:
        if position >= len(tokens):
            raise InvalidSelector(f"unterminated value set in selector {quoted(text)}")
        value = tokens[position]
        if value in ("(", "!", "=", "==", "!="):
            raise InvalidSelector(f"unexpected {value!r} in value set of selector {quoted(text)}")
        if value in (",", ")"):
            value = ""
        else:
            position += 1
        _check_value(value)
        values.append(value)
        if position >= len(tokens):
            raise InvalidSelector(f"unterminated value set in selector {quoted(text)}")
        if tokens[position] == ")":
            return tuple(values), position + 1
        if tokens[position] != ",":
            raise InvalidSelector(f"expected ',' or ')' in value set of selector {quoted(text)}")
        position += 1


def _expect_word(tokens: list[str], position: int, text: str) -> str:
    if position >= len(tokens) or tokens[position] in ("!=", "==", "=", "(", ")", ",", "!"):
        raise InvalidSelector(f"expected a label key in selector {quoted(text)}")
    return tokens[position]


def _check_key(key: str) -> None:
    error = label_key_error(key)
    if error:
        raise InvalidSelector(error)


def _check_value(value: str) -> None:
    error = label_value_error(value)
    if error:
        raise InvalidSelector(error)
