"""Schemas: the request and response bodies of the jobs API, as pydantic models.

Requests are validated with these models and the OpenAPI document is
generated from the same models. `validate()` turns pydantic's errors into
InvalidField, whose message names the field.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from service.core.config import whole_number
from service.core.errors import InvalidField
from service.jobs.describe import STATUSES
from service.jobs.model import JOB_ID
from service.jobs.waits import MAX_WAIT_SECONDS

Model = TypeVar("Model", bound=BaseModel)

MAX_ARGS = 1000
MAX_BATCH = 1000
MAX_DELAY_SECONDS = 366 * 24 * 3600
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
MAX_TTL_SECONDS = 366 * 24 * 3600
MAX_RETRIES = 25
# pydantic matches `pattern` with Rust's regex, whose `$` is the very end of the text (not before a final newline).
KEY_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
GROUP_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"


def _ascii_whole(value: Any) -> Any:
    """A query number is ASCII digits only: pydantic's lax int also takes ' 5', '5_0', '+5' and '5.0'."""
    if isinstance(value, str):
        number = whole_number(value)
        if number is None:
            raise ValueError(f"{value[:20]!r} is not a whole number")
        return number
    return value


def _ascii_seconds(value: Any) -> Any:
    """A query duration is ASCII digits with an optional fraction ('5', '0.25'): no sign, exponent, nan or inf."""
    if isinstance(value, str):
        if not SECONDS_TEXT.fullmatch(value):
            raise ValueError(f"{value[:20]!r} is not a number of seconds")
        return float(value)
    return value


# An integer query parameter (query strings are text: strict mode would refuse every value).
QueryInt = Annotated[int, BeforeValidator(_ascii_whole)]
# A duration query parameter in seconds.
SECONDS_TEXT = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?")
QuerySeconds = Annotated[float, BeforeValidator(_ascii_seconds)]


def _json_value(value: Any) -> Any:
    """`value` if JSON carries it as is; else ValueError (1e400 parses as inf; a YAML file can give dates or sets)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite (1e400 is out of range; NaN and Infinity are not JSON)")
        if isinstance(item, dict):
            if any(not isinstance(key, str) for key in item):
                raise ValueError("object keys must be strings")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif item is not None and not isinstance(item, (str, bool, int, float)):
            raise ValueError(f"a {type(item).__name__} is not a JSON value")
    return value


def _argument_names(value: dict[str, Any]) -> dict[str, Any]:
    bad = next((k for k in value if not k.isidentifier()), None)
    if bad is not None:
        raise ValueError(f"{bad[:50]!r} is not a valid argument name")
    return _json_value(value)


# A task's positional and keyword arguments, as every request and declared file gives them.
Args = Annotated[list[Any], AfterValidator(_json_value), Field(max_length=MAX_ARGS)]
Kwargs = Annotated[dict[str, Any], AfterValidator(_argument_names), Field(max_length=MAX_ARGS)]


class Strict(BaseModel):
    """Base for request bodies: unknown fields are refused, no type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RetryRequest(Strict):
    """How often to retry a failed job and how long to wait before each retry."""

    max: int = Field(ge=0, le=MAX_RETRIES, description="retries after the first execution")
    backoff: list[int] | Literal["exponential"] = Field(
        default="exponential",
        description="seconds before each retry (the last repeats), or exponential with jitter",
    )

    @field_validator("backoff")
    @classmethod
    def _backoff_range(cls, value: list[int] | str) -> list[int] | str:
        if isinstance(value, list):
            if not 1 <= len(value) <= MAX_RETRIES:
                raise ValueError(f"give 1 to {MAX_RETRIES} intervals")
            if any(not 0 <= v <= MAX_DELAY_SECONDS for v in value):
                raise ValueError(f"each interval must be 0 to {MAX_DELAY_SECONDS} seconds")
        return value


class JobRequest(Strict):
    """POST /jobs: one job to enqueue."""

    task: str = Field(min_length=1, max_length=200, description="a registered task name, e.g. diag.echo")
    args: Args = Field(default_factory=list)
    kwargs: Kwargs = Field(default_factory=dict)
    queue: str | None = Field(default=None, description="high, default or low; the task's lane if omitted")
    delay: float | None = Field(default=None, ge=0, le=MAX_DELAY_SECONDS, description="seconds from now")
    at: AwareDatetime | None = Field(default=None, strict=False, description="ISO 8601 with offset")
    timeout: int | None = Field(default=None, ge=1, le=MAX_TIMEOUT_SECONDS, description="seconds a run may take")
    ttl: int | None = Field(default=None, ge=1, le=MAX_TTL_SECONDS, description="discard if not started in time")
    result_ttl: int | None = Field(default=None, ge=0, le=MAX_TTL_SECONDS, description="seconds to keep the result")
    retry: RetryRequest | None = None
    idempotency_key: str | None = Field(default=None, pattern=KEY_PATTERN)
    depends_on: list[str] | None = Field(default=None, max_length=100, description="ids of jobs to wait for")
    group: str | None = Field(
        default=None, pattern=GROUP_PATTERN, description="fair share within the lane: groups take turns"
    )

    @field_validator("depends_on")
    @classmethod
    def _job_ids(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not JOB_ID.fullmatch(v) for v in value):
            raise ValueError("each entry must be a job id")
        return value

    def model_post_init(self, context: Any) -> None:
        if self.delay is not None and self.at is not None:
            raise InvalidField("at", "give either delay or at, not both")


class OnCompleteRequest(Strict):
    """A batch's callback: a task enqueued once every job of the batch has ended, with keyword `batch`."""

    task: str = Field(min_length=1, max_length=200, description="a registered task that takes the keyword `batch`")
    args: Args = Field(default_factory=list)
    kwargs: Kwargs = Field(default_factory=dict)
    queue: str | None = Field(default=None, description="high, default or low; the task's lane if omitted")


class BatchRequest(Strict):
    """POST /jobs/batch: many jobs, validated all-or-nothing; with on_complete, a batch with a callback."""

    jobs: list[JobRequest] = Field(min_length=1, max_length=MAX_BATCH)
    on_complete: OnCompleteRequest | None = None


class CancelRequest(Strict):
    """POST /jobs/<id>/cancel takes no fields."""


class RequeueRequest(Strict):
    """POST /jobs/<id>/requeue takes no fields."""


class Query(Strict):
    """Base for query strings: unknown parameters are refused; numbers are QueryInt."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class JobQuery(Query):
    """GET /jobs/<id> query string."""

    wait: QuerySeconds | None = Field(
        default=None, gt=0, le=MAX_WAIT_SECONDS, description="seconds to wait for the job to end (at most 60)"
    )


class ListJobsQuery(Query):
    """GET /jobs query string (`limit` is capped by MAX_PAGE_SIZE)."""

    status: Literal[STATUSES] | None = None  # type: ignore[valid-type]
    queue: str | None = None
    limit: QueryInt = Field(default=50, ge=1)
    cursor: str | None = Field(default=None, max_length=50, pattern=r"^[0-9]{1,6}\.[0-9]{1,12}$")


class JobOut(BaseModel):
    """A job as the API returns it."""

    id: str
    task: str | None
    queue: str | None
    status: str
    args: list[Any]
    kwargs: dict[str, Any]
    result: Any = None
    error: str | None = None
    attempts: int
    group: str | None = None
    batch_id: str | None = None
    enqueued_at: str | None
    started_at: str | None
    ended_at: str | None
    progress: Any = Field(default=None, description="the task's latest service.progress() value, null until set")
    schedule_id: str | None = None
    scheduled_for: str | None = None


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None


class BatchOut(BaseModel):
    """A batch's tally (GET /batches/<id>): total = finished + failed + canceled + pending."""

    id: str
    total: int
    finished: int
    failed: int
    canceled: int
    pending: int
    on_complete_job_id: str | None


class ErrorBody(BaseModel):
    code: str = Field(
        description="what went wrong, for programs: e.g. invalid_field, unknown_task, job_not_found, queue_full, "
        "redis_unavailable, redis_full, redis_read_only"
    )
    message: str = Field(description="what went wrong, for people")


class ErrorOut(BaseModel):
    """Every error: {"error": {"code": ..., "message": ...}}."""

    error: ErrorBody


def validate(model: type[Model], data: Any) -> Model:
    """Return `data` validated as `model`; raise InvalidField naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(part) for part in error["loc"]) or "body"
        message = str(error["msg"]).removeprefix("Value error, ")
        raise InvalidField(field, message) from None
