"""Bodies: requests' size limit, strict JSON parsing and schema validation; answers that are always JSON."""

from __future__ import annotations

import json
import math
from typing import Any

from flask import Flask, request
from flask.json.provider import DefaultJSONProvider

from service.core.errors import MalformedRequest, PayloadTooLarge, UnsupportedMediaType
from service.jobs.schemas import Model, validate

MAX_BODY_BYTES = 1024 * 1024
MAX_NESTING = 32


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError("duplicate key in object")
    return data


def _depth(value: Any, limit: int) -> int:
    """Return the nesting depth of `value` (a scalar inside a container counts), stopping once it passes `limit`."""
    stack = [(value, 1)]
    deepest = 1
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        if children:
            deepest = max(deepest, level + 1)
            if deepest > limit:
                return deepest
            stack.extend((c, level + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def json_body() -> Any:
    """Return the request's JSON body, parsed strictly; raise 400/413/415 errors."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")
    raw = request.get_data(cache=True)
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        raise MalformedRequest("request body is empty; send a JSON object")
    if request.mimetype and request.mimetype != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    return decode(raw)


def decode(raw: bytes) -> Any:
    """Return a JSON document parsed strictly: UTF-8, no NaN, no duplicate keys, at most MAX_NESTING deep."""
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedRequest(f"request body is not valid JSON: {str(exc)[:200]}") from None
    if _depth(data, MAX_NESTING) > MAX_NESTING:
        raise MalformedRequest(f"request body is nested deeper than {MAX_NESTING} levels")
    return data


def parse(model: type[Model]) -> Model:
    """Return the request body validated as `model`."""
    return parse_document(model, json_body())


def parse_document(model: type[Model], data: Any) -> Model:
    """Return a parsed body validated as `model`; it must be a JSON object."""
    if not isinstance(data, dict):
        raise MalformedRequest("request body must be a JSON object")
    return validate(model, data)


def _finite(value: Any) -> Any:
    """`value` with each number JSON cannot carry (NaN, infinities) made None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


class FiniteJSON(DefaultJSONProvider):
    """Every answer is JSON a client can parse: the API refuses NaN and infinities, so only a record
    planted in Redis can hold one, and it comes back as null rather than as `NaN`."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        try:
            return super().dumps(obj, allow_nan=False, **kwargs)
        except ValueError:
            return super().dumps(_finite(obj), allow_nan=False, **kwargs)


def init_app(app: Flask) -> None:
    """Let Flask refuse oversized bodies before they are read; answer only JSON a client can parse."""
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json = FiniteJSON(app)
