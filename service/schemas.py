"""Schemas: the request bodies HTTP and the CLI accept, validated by pydantic.

One model per body. `validate()` turns pydantic's errors into InvalidField,
whose message names the field (SPEC §5: every 422 names the field).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import InvalidField

Model = TypeVar("Model", bound=BaseModel)

MAX_ARGS = 1000


class Strict(BaseModel):
    """Base for request bodies: unknown fields are refused, no type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class JobRequest(Strict):
    """POST /jobs: one job to enqueue."""

    task: str = Field(min_length=1, max_length=200, description="a registered task name, e.g. diag.echo")
    args: list[Any] = Field(default_factory=list, max_length=MAX_ARGS)
    kwargs: dict[str, Any] = Field(default_factory=dict, max_length=MAX_ARGS)
    queue: str | None = Field(default=None, description="high, default or low; the task's lane if omitted")


def validate(model: type[Model], data: Any) -> Model:
    """Return `data` validated as `model`; raise InvalidField naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(part) for part in error["loc"]) or "body"
        raise InvalidField(field, error["msg"]) from None
