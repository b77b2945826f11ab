"""A small PromQL checker for tests that run where promtool is not installed.

It is not a parser of the full language. It tokenizes an expression and checks what goes wrong
most often in hand-written rules and dashboards: unbalanced brackets, label matchers that are not
`name op "value"`, range selectors that are not a duration, unknown functions, an operator with
no operand, and metric names that shellgate does not expose. promtool (`check rules`,
`test rules`) remains the authority when it is on PATH.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![A-Za-z0-9_]))
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=,])
  | (?P<open>[(\[{])
  | (?P<close>[)\]}])
    """,
    re.VERBOSE,
)

FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "count_over_time", "delta", "deriv", "floor", "histogram_quantile",
    "idelta", "increase", "irate", "label_replace", "last_over_time", "max_over_time",
    "min_over_time", "rate", "resets", "round", "scalar", "sort", "sort_desc", "sum_over_time",
    "time", "timestamp", "vector",
}  # fmt: skip
AGGREGATIONS = {
    "avg", "bottomk", "count", "count_values", "group", "max", "min", "quantile", "stddev",
    "stdvar", "sum", "topk",
}  # fmt: skip
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset",
}  # fmt: skip
_BINARY = {"+", "-", "*", "/", "%", "^", "==", "!=", ">", "<", ">=", "<=", "and", "or", "unless"}
_MATCH_OPS = {"=", "!=", "=~", "!~"}
_PAIRS = {"(": ")", "[": "]", "{": "}"}
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if not match:
            raise ValueError(f"unexpected character {expr[pos]!r} at {pos} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "ws":
            tokens.append((kind, match.group()))
        pos = match.end()
    return tokens


def check(expr: str, metrics: dict[str, str]) -> set[str]:
    """Raise ValueError on a malformed expression; return the metric names it selects.

    `metrics` maps every allowed metric name to its type; a histogram may also be selected
    through its _bucket, _sum and _count series.
    """
    tokens = tokenize(expr)
    if not tokens:
        raise ValueError("empty expression")
    _check_brackets(tokens, expr)
    used: set[str] = set()
    stack: list[str] = []
    for i, (kind, text) in enumerate(tokens):
        prev = tokens[i - 1] if i else ("", "")
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        inside = stack[-1] if stack else ""
        if kind == "open":
            if text == "[" and not (_ends_operand(prev) and nxt[0] == "duration"):
                raise ValueError(f"range selector needs a selector and a duration in {expr!r}")
            if text == "{":
                _check_matchers(tokens, i, expr)
            stack.append(text)
        elif kind == "close":
            stack.pop()
        elif inside == "[":
            if kind != "duration":
                raise ValueError(f"range selector holds {text!r}, not a duration, in {expr!r}")
        elif inside == "{":
            continue  # checked by _check_matchers
        elif kind == "ident":
            if nxt == ("open", "("):
                if text not in FUNCTIONS | AGGREGATIONS | {"by", "without", "on", "ignoring"}:
                    raise ValueError(f"unknown function {text!r} in {expr!r}")
            elif not (
                text in KEYWORDS
                or (text in AGGREGATIONS and nxt[1] in ("by", "without"))
                or _in_label_list(tokens, i)
            ):
                used.add(_metric(text, metrics, expr))
        elif kind == "op" and text in _BINARY:
            unary = text in ("-", "+") and not _ends_operand(prev)
            if not unary and not _ends_operand(prev):
                raise ValueError(f"operator {text!r} has no left operand in {expr!r}")
            if not nxt[0] or nxt[0] == "close":
                raise ValueError(f"operator {text!r} has no right operand in {expr!r}")
    return used


def _check_brackets(tokens: list[tuple[str, str]], expr: str) -> None:
    stack: list[str] = []
    for kind, text in tokens:
        if kind == "open":
            stack.append(text)
        elif kind == "close" and (not stack or _PAIRS[stack.pop()] != text):
            raise ValueError(f"unbalanced {text!r} in {expr!r}")
    if stack:
        raise ValueError(f"unclosed {stack[-1]!r} in {expr!r}")


def _check_matchers(tokens: list[tuple[str, str]], start: int, expr: str) -> None:
    """`{` name op "value" (, name op "value")* [,] `}`"""
    i = start + 1
    while tokens[i] != ("close", "}"):
        name, op, value = tokens[i : i + 3]
        if name[0] != "ident" or op[1] not in _MATCH_OPS or value[0] != "string":
            raise ValueError(f"bad label matcher {name[1]}{op[1]}{value[1]} in {expr!r}")
        i += 3
        if tokens[i] == ("op", ","):
            i += 1
        elif tokens[i] != ("close", "}"):
            raise ValueError(f"expected ',' or '}}' after a matcher in {expr!r}")


def _in_label_list(tokens: list[tuple[str, str]], i: int) -> bool:
    """Is token i a label name inside by(...), without(...), on(...) or ignoring(...)?"""
    j = i - 1
    while j >= 0 and (tokens[j][0] == "ident" or tokens[j] == ("op", ",")):
        j -= 1
    grouping = ("by", "without", "on", "ignoring")
    return j > 0 and tokens[j] == ("open", "(") and tokens[j - 1][1] in grouping


def _ends_operand(token: tuple[str, str]) -> bool:
    kind, text = token
    if kind in ("number", "string", "duration"):
        return True
    if kind == "close":
        return True
    return kind == "ident" and text not in KEYWORDS


def _metric(name: str, metrics: dict[str, str], expr: str) -> str:
    if name in metrics:
        return name
    for suffix in _HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and metrics.get(base) == "histogram":
            return base
    raise ValueError(f"unknown metric {name!r} in {expr!r}")
