"""Probes: liveness and readiness, open without a token."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel

from service.api.context import redis
from service.api.errors import error_response
from service.api.openapi import document
from service.core.connection import ping

bp = Blueprint("system", __name__)


class Status(BaseModel):
    status: str
    redis: str | None = None


@bp.get("/healthz")
@document(200, Status, tags=("probes",), public=True)
def healthz() -> Response:
    """Liveness: the process answers; Redis is not touched."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
@document(200, Status, tags=("probes",), public=True)
def readyz() -> Response:
    """Readiness: 200 when Redis answers PING, else 503."""
    if not ping(redis()):
        return error_response(503, "redis_unavailable", "Redis is not answering")
    return jsonify({"status": "ok", "redis": "ok"})
