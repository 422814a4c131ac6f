"""Metric and label names in a PromQL expression, read with a small tokenizer (for the docs' rules and board)."""

from __future__ import annotations

import re

TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])                      # a range or subquery: [5m], [1h:1m]
  | (?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?[a-z]*)  # 0.99, 1e3, and durations: 1h, 90s
  | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<punct>[(){},]|[=!]~|[!=<>]=?|[-+*/%^])
    """,
    re.VERBOSE | re.IGNORECASE,
)
# Names that are PromQL itself; a name followed by "(" is a function or an aggregation.
KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
}  # fmt: skip
# Keywords followed by a parenthesised list of label names.
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def tokens(expr: str) -> list[tuple[str, str]]:
    """Return (kind, text) for each token of `expr`, spaces left out; refuse a character PromQL has no token for."""
    found, at = [], 0
    while at < len(expr):
        match = TOKEN.match(expr, at)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[at:]!r}")
        if match.lastgroup != "space":
            found.append((str(match.lastgroup), match.group()))
        at = match.end()
    return found


def names(expr: str) -> tuple[set[str], set[str]]:
    """Return (metric names, label names) that `expr` selects or groups by."""
    metrics: set[str] = set()
    labels: set[str] = set()
    parts = tokens(expr)
    in_selector = in_label_list = False
    for i, (kind, text) in enumerate(parts):
        following = parts[i + 1][1] if i + 1 < len(parts) else ""
        if kind == "punct":
            if text == "{":
                in_selector = True
            elif text == "}":
                in_selector = False
            elif text == ")":
                in_label_list = False
        elif kind != "name":
            continue
        elif in_selector or in_label_list:
            labels.add(text)
        elif text.lower() in LABEL_LISTS:
            in_label_list = following == "("
        elif text.lower() not in KEYWORDS and following != "(":
            metrics.add(text)
    return metrics, labels
