"""Error translation: every error the web app answers has the SPEC §5 JSON shape."""

from __future__ import annotations

import logging

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


def error_response(status: int, code: str, message: str) -> Response:
    """Return the JSON error body with `status`."""
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="api"'
    if status == 503:
        response.headers["Retry-After"] = "1"
    return response


def handle_service_error(exc: ServiceError) -> Response:
    response = error_response(exc.status, exc.code, exc.message)
    if exc.retry_after_seconds is not None:
        response.headers["Retry-After"] = str(exc.retry_after_seconds)
    return response


def handle_http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    response = error_response(status, HTTP_CODES.get(status, "http_error"), exc.description or exc.name)
    if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
        response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
    return response


def handle_redis_error(exc: RedisError) -> Response:
    """503 with Retry-After: Redis unreachable, full (OOM) or refusing writes (MISCONF, READONLY), each its own code."""
    error = redis_refusal(exc)
    log.warning("%s: %s", error.code, type(exc).__name__)
    return handle_service_error(error)


def handle_no_such_job(exc: NoSuchJobError) -> Response:
    """A job id of the right shape that names no job, met inside library code (rq-dashboard's views)."""
    return error_response(404, "job_not_found", "no such job")


def handle_unexpected(exc: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(500, "internal_error", "an unexpected error occurred")


def init_app(app: Flask) -> None:
    """Register the handlers that turn every error into the JSON shape."""
    app.register_error_handler(ServiceError, handle_service_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(RedisError, handle_redis_error)
    app.register_error_handler(NoSuchJobError, handle_no_such_job)
    app.register_error_handler(Exception, handle_unexpected)
