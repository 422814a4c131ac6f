"""Batch answers: the JSON text of POST /jobs/batch's answer, the same bytes as the app's JSON provider writes.

Encoding 100 job descriptions with sorted keys costs ~3 us a job, more than writing the job. The jobs of
one batch differ in their id, args and kwargs and share the rest, so each shape (every other field) is
rendered once per batch, by describe() and the app's provider themselves, with a mark where each of those
three goes; a job is then its shape's fragments around its own three values.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from service.jobs.damage import BATCH_FIELD
from service.jobs.writer import Submitted

# A job's own values, each replaced by a mark no other field can hold (its JSON text is the mark quoted).
OWN = ("args", "id", "kwargs")
MARKS = {name: f"\x01{name}\x01" for name in OWN}
# The provider's settings (service.api.body.FiniteJSON): sorted keys, ASCII, no NaN; made once (json.dumps
# sets up an encoder per call). Args and kwargs are validated JSON values: nothing for `default` to do.
_ENCODE = (
    c_make_encoder(None, None, encode_basestring_ascii, None, ": ", ", ", True, False, False)
    if c_make_encoder is not None
    else None
)


def batch_text(dumps: Callable[[Any], str], outcomes: list[Submitted], batch_id: str | None) -> str | None:
    """The answer's JSON text (what `dumps` makes of enqueued()'s body), or None to let `dumps` do it."""
    if _ENCODE is None or any(o.holder is not None for o in outcomes):
        return None
    shapes: dict[tuple[Any, ...], tuple[list[str], list[int]]] = {}
    jobs = []
    try:
        for outcome in outcomes:
            p = outcome.planned
            assert p is not None
            key = (p.spec.name, p.lane, outcome.status, outcome.at, p.group, p.extra.get(BATCH_FIELD))
            shape = shapes.get(key)
            if shape is None:
                shape = shapes[key] = fragments(dumps(outcome.describe() | MARKS))
            parts, (first, second, third) = shape
            own = ("".join(_ENCODE(p.args, 0)), '"' + p.id + '"', "".join(_ENCODE(p.kwargs, 0)))  # in OWN's order
            jobs.append(parts[0] + own[first] + parts[1] + own[second] + parts[2] + own[third] + parts[3])
    except (ValueError, TypeError):  # a value JSON cannot carry: the provider's own fallback answers
        return None
    head, tail = dumps({"jobs": [], "batch_id": batch_id, "next_cursor": None}).split("[]", 1)
    return head + "[" + ", ".join(jobs) + "]" + tail


def fragments(text: str) -> tuple[list[str], list[int]]:
    """A job's JSON text cut at its marks: the 4 fragments between them, and which of OWN fills each gap."""
    quoted = {json.dumps(MARKS[name]): index for index, name in enumerate(OWN)}
    found = sorted((text.index(q), q) for q in quoted)
    parts, start = [], 0
    for at, q in found:
        parts.append(text[start:at])
        start = at + len(q)
    parts.append(text[start:])
    return parts, [quoted[q] for _, q in found]
