"""Audit in the web app: a request id for every request (X-Request-Id), an audit event for every accepted
state change (by the route table, service.api.scopes) and every 401/403, and GET /audit (admin)."""

from __future__ import annotations

import logging
import os
import re

from flask import Blueprint, Flask, Response, g, jsonify, request
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from service.api.context import redis, settings
from service.api.openapi import document
from service.api.query import query
from service.api.scopes import route_for
from service.jobs.schemas import Query, QueryInt
from service.ops import audit
from service.ops.audit import AuditEvent, RideAlong

log = logging.getLogger(__name__)
bp = Blueprint("audit", __name__)

# An incoming X-Request-Id is kept when it looks like one (a load balancer's or a client's); else we make one.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,128}")
DENIALS = {401: "auth.unauthorized", 403: "auth.forbidden"}


class AuditQuery(Query):
    """GET /audit: `limit` events older than the event id `cursor` (capped by MAX_PAGE_SIZE)."""

    limit: QueryInt = Field(default=50, ge=1)
    cursor: str | None = Field(default=None, pattern=r"^[0-9]{1,20}-[0-9]{1,20}$")


class AuditEventOut(BaseModel):
    id: str
    time: str
    principal: str
    action: str
    target: str
    status: int | None
    remote_addr: str
    request_id: str


class AuditList(BaseModel):
    events: list[AuditEventOut]
    next_cursor: str | None


@bp.get("/audit")
@document(200, AuditList, query=AuditQuery, tags=("audit",))
def list_events() -> Response:
    """Audit events, newest first: state changes (not enqueues) and refused tokens."""
    args = query(AuditQuery)
    events, cursor = audit.list_events(redis(), args.limit, args.cursor)
    return jsonify({"events": events, "next_cursor": cursor})


def request_id_for(incoming: str) -> str:
    """The request's id: the client's or load balancer's X-Request-Id when it looks like one, else a new one."""
    return incoming if REQUEST_ID.fullmatch(incoming) else os.urandom(16).hex()  # 32 hex digits, as uuid4().hex


def assign_request_id() -> None:
    g.request_id = request_id_for(request.headers.get("X-Request-Id", ""))


def event_for(response: Response) -> AuditEvent | None:
    """The event this answer makes: a denial, an accepted audited route, or None."""
    return _event(response.status_code)


def ride_along() -> RideAlong | None:
    """The audit event of this request's write, for the write's own script to record (its status is the
    writer's to give); None if the route is not audited. Once it is recorded, the answer records none."""
    event = _event(200)
    g.audit_ride = RideAlong(event, settings().limits.audit_events) if event is not None else None
    return g.audit_ride


def _event(status: int) -> AuditEvent | None:
    rule = request.url_rule.rule if request.url_rule is not None else request.path
    if status in DENIALS:
        action, target = DENIALS[status], f"{request.method} {rule}"
    elif 200 <= status < 400 and request.endpoint is not None and route_for(request.endpoint).action:
        route, values = route_for(request.endpoint), request.view_args or {}
        action, target = str(route.action).format_map(values), route.target.format_map(values)
    else:
        return None
    principal = g.get("principal")
    return AuditEvent(
        principal=principal.name if principal is not None else "anonymous",
        action=action,
        target=target,
        status=status,
        remote_addr=request.remote_addr or "",
        request_id=g.get("request_id", ""),
    )


def record_and_tag(response: Response) -> Response:
    """After every request: record its audit event (one XADD; reads and enqueues make none) unless the write's
    own script did (ride_along); echo X-Request-Id."""
    event = event_for(response)
    ride = g.get("audit_ride")
    if event is not None and not (ride is not None and ride.recorded):
        try:
            audit.record(redis(), event, settings().limits.audit_events)
        except RedisError as exc:  # the change stands; the log line above the stream still has it
            log.warning("audit event not stored: Redis unavailable (%s)", type(exc).__name__)
    response.headers["X-Request-Id"] = g.get("request_id", "")
    return response


def init_app(app: Flask) -> None:
    """Give every request an id first (before authentication), record events after, serve /audit."""
    app.before_request(assign_request_id)
    app.after_request(record_and_tag)
    app.register_blueprint(bp)
