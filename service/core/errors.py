"""Errors: the service's named failures, each with its HTTP status and code.

One handler (service.api.errors) turns a ServiceError into the JSON shape
`{"error": {"code": ..., "message": ...}}`; the CLI prints the message.
"""

from __future__ import annotations

import re

from redis.exceptions import ReadOnlyError, RedisError

from service.core.outage import write_refused


class ServiceError(Exception):
    """Raised when a request cannot be served; carries an HTTP status and a machine code."""

    status = 500
    code = "internal_error"
    # Seconds a client should wait before trying again (a Retry-After header), or None.
    retry_after_seconds: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ServiceError):
    """Raised when an environment variable is missing or invalid at process start."""

    code = "config_error"


class MalformedRequest(ServiceError):
    """Raised when a request body is not valid JSON."""

    status = 400
    code = "malformed_json"


class Unauthorized(ServiceError):
    """Raised when a request has no bearer token or a wrong one."""

    status = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    """Raised when a valid token lacks the scope a request needs; the message names the scope."""

    status = 403
    code = "forbidden"


class NotFound(ServiceError):
    """Raised when a path or an id names nothing that exists."""

    status = 404
    code = "not_found"


class JobNotFound(NotFound):
    """Raised when a job id names no stored job."""

    code = "job_not_found"


class BatchNotFound(NotFound):
    """Raised when a batch id names no stored batch (or it expired after its keep time)."""

    code = "batch_not_found"


class MethodNotAllowed(ServiceError):
    """Raised when a path exists but not for this HTTP method."""

    status = 405
    code = "method_not_allowed"


class Conflict(ServiceError):
    """Raised when the request contradicts the current state (e.g. cancel a finished job)."""

    status = 409
    code = "conflict"


class ScheduleLimitReached(Conflict):
    """Raised when a new schedule would pass MAX_SCHEDULES (replacing an existing one is always allowed)."""

    code = "schedule_limit_reached"


class QueueFull(ServiceError):
    """Raised when an enqueue would put more jobs in a lane than MAX_QUEUE_LENGTH; nothing is written."""

    status = 429
    code = "queue_full"
    retry_after_seconds = 5


class PayloadTooLarge(ServiceError):
    """Raised when a request body is larger than the service accepts."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    """Raised when a request body is not sent as application/json."""

    status = 415
    code = "unsupported_media_type"


class InvalidField(ServiceError):
    """Raised when a field of a request is missing or has a bad value; the message names it."""

    status = 422
    code = "invalid_field"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class UnknownTask(InvalidField):
    """Raised when a task name is not registered."""

    code = "unknown_task"

    def __init__(self, name: object, field: str = "task") -> None:
        super().__init__(field, f"{name!r} is not a registered task")


class InternalTask(UnknownTask):
    """Raised when a client names a task that only the service itself enqueues (e.g. hooks.webhook)."""

    def __init__(self, name: str, field: str = "task") -> None:
        InvalidField.__init__(self, field, f"{name!r} is an internal task: only the service enqueues it")


class UnknownQueue(InvalidField):
    """Raised when a queue name is not one of the lanes."""

    code = "unknown_queue"

    def __init__(self, name: object, field: str = "queue") -> None:
        super().__init__(field, f"{name!r} is not a lane (high, default, low)")


class RedisUnavailable(ServiceError):
    """Raised when Redis cannot be reached or answers with an error in time."""

    status = 503
    code = "redis_unavailable"


class RedisFull(RedisUnavailable):
    """Raised when Redis refuses a write because it is out of memory (maxmemory reached, noeviction policy)."""

    code = "redis_full"
    retry_after_seconds = 5


class RedisReadOnly(RedisUnavailable):
    """Raised when Redis refuses writes: it cannot persist to disk (MISCONF) or it is a read-only replica."""

    code = "redis_read_only"
    retry_after_seconds = 5


# A replica's refusal, plain or from inside a script (full and MISCONF: service.core.outage.write_refused).
READONLY_REPLY = re.compile(r"(?:^|[\s-])READONLY\b")


def redis_refusal(exc: RedisError) -> RedisUnavailable:
    """The service error for a Redis error: full (OOM), refusing writes (MISCONF, READONLY) or unavailable.

    The API answers each with a 503 and Retry-After; the CLI exits 3 with its message.
    """
    text = str(exc)
    refused = write_refused(exc)
    if refused == "maxmemory":
        return RedisFull(
            "Redis is full (maxmemory reached, noeviction policy): it refuses writes, so nothing was written; "
            "retry later, or free memory or raise maxmemory"
        )
    if refused == "misconf":
        return RedisReadOnly(
            "Redis refuses writes: it cannot persist to disk (MISCONF), so nothing was written; "
            "retry once its disk problem is fixed"
        )
    if isinstance(exc, ReadOnlyError) or READONLY_REPLY.search(text):
        return RedisReadOnly("Redis refuses writes: it is a read-only replica, so nothing was written; retry shortly")
    if "max number of clients reached" in text:
        return RedisUnavailable("Redis unavailable: it refuses new connections (maxclients reached); try again shortly")
    return RedisUnavailable(f"Redis unavailable ({type(exc).__name__}); try again shortly")


class ScheduleNotFound(NotFound):
    """Raised when a schedule id names no stored schedule."""

    code = "schedule_not_found"


class CalendarNotFound(NotFound):
    """Raised when a calendar id names no stored calendar."""

    code = "calendar_not_found"


class ScheduleDamaged(Conflict):
    """Raised when a schedule's stored record cannot be read (written by something else than the service)."""

    code = "schedule_damaged"


class CalendarInUse(Conflict):
    """Raised when a calendar that schedules skip by is to be deleted; the message says how many."""

    code = "calendar_in_use"
