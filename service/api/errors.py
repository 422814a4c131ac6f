"""Error translation: every error the web app answers has the one JSON error shape."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from werkzeug.exceptions import HTTPException

from service.core.errors import ServiceError, redis_refusal

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_field",
    429: "too_many_requests",
}


Answer = tuple[int, dict[str, Any], dict[str, str]]


def error_answer(status: int, code: str, message: str, retry_after_seconds: int | None = None) -> Answer:
    """The status, JSON body and headers of an error (401: WWW-Authenticate; 503: Retry-After, 1 s by default)."""
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="api"'
    if retry_after_seconds is not None or status == 503:
        headers["Retry-After"] = str(retry_after_seconds or 1)
    return status, {"error": {"code": code, "message": message}}, headers


def answer_for(exc: Exception) -> Answer:
    """The error answer of a service error, a Redis error (503: unreachable, full, refusing writes) or a fault (500)."""
    if isinstance(exc, RedisError):
        error = redis_refusal(exc)
        log.warning("%s: %s", error.code, type(exc).__name__)
        exc = error
    if not isinstance(exc, ServiceError):
        log.error("unhandled error", exc_info=exc)
        return error_answer(500, "internal_error", "an unexpected error occurred")
    return error_answer(exc.status, exc.code, exc.message, exc.retry_after_seconds)


def respond(answer: Answer) -> Response:
    status, body, headers = answer
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers)
    return response


def error_response(status: int, code: str, message: str) -> Response:
    """Return the JSON error body with `status`."""
    return respond(error_answer(status, code, message))


def handle_service_error(exc: ServiceError) -> Response:
    return respond(answer_for(exc))


def handle_http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    response = error_response(status, HTTP_CODES.get(status, "http_error"), exc.description or exc.name)
    if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
        response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
    return response


def handle_redis_error(exc: RedisError) -> Response:
    """503 with Retry-After: Redis unreachable, full (OOM) or refusing writes (MISCONF, READONLY), each its own code."""
    return respond(answer_for(exc))


def handle_no_such_job(exc: NoSuchJobError) -> Response:
    """A job id of the right shape that names no job, met inside library code (rq-dashboard's views)."""
    return error_response(404, "job_not_found", "no such job")


def handle_unexpected(exc: Exception) -> Response:
    return respond(answer_for(exc))


def init_app(app: Flask) -> None:
    """Register the handlers that turn every error into the JSON shape."""
    app.register_error_handler(ServiceError, handle_service_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(RedisError, handle_redis_error)
    app.register_error_handler(NoSuchJobError, handle_no_such_job)
    app.register_error_handler(Exception, handle_unexpected)
