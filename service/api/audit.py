"""Audit in the web app: a request id for every request (X-Request-Id), an audit event for every accepted
state change (by the route table, service.api.scopes) and every 401/403, and GET /audit (admin)."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from flask import Blueprint, Flask, Response, g, jsonify, request
from pydantic import BaseModel, Field
from redis import Redis
from redis.exceptions import RedisError

from service.api.context import redis, settings
from service.api.openapi import document
from service.api.query import query
from service.api.scopes import route_for
from service.core.config import ApiToken
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
    return event_of(
        status,
        request.method,
        rule,
        request.endpoint,
        request.view_args or {},
        g.get("principal"),
        request.remote_addr or "",
        g.get("request_id", ""),
    )


def event_of(
    status: int,
    method: str,
    rule: str,
    endpoint: str | None,
    values: dict[str, Any],
    principal: ApiToken | None,
    remote_addr: str,
    request_id: str,
) -> AuditEvent | None:
    """The event of an answer with `status` to a request (a denial, an accepted audited route), or None."""
    if status in DENIALS:
        action, target = DENIALS[status], f"{method} {rule}"
    elif 200 <= status < 400 and endpoint is not None and route_for(endpoint).action:
        route = route_for(endpoint)
        action, target = str(route.action).format_map(values), route.target.format_map(values)
    else:
        return None
    return AuditEvent(
        principal=principal.name if principal is not None else "anonymous",
        action=action,
        target=target,
        status=status,
        remote_addr=remote_addr,
        request_id=request_id,
    )


def record_and_tag(response: Response) -> Response:
    """After every request: record its audit event (one XADD; reads and enqueues make none) unless the write's
    own script did (ride_along); echo X-Request-Id."""
    settle(redis(), event_for(response), g.get("audit_ride"), settings().limits.audit_events)
    response.headers["X-Request-Id"] = g.get("request_id", "")
    return response


def settle(connection: Redis, event: AuditEvent | None, ride: RideAlong | None, max_events: int) -> None:
    """Record the answer's `event`, if any, unless the write's own script recorded it (`ride`)."""
    if event is not None and not (ride is not None and ride.recorded):
        try:
            audit.record(connection, event, max_events)
        except RedisError as exc:  # the change stands; the log line above the stream still has it
            log.warning("audit event not stored: Redis unavailable (%s)", type(exc).__name__)


def init_app(app: Flask) -> None:
    """Give every request an id first (before authentication), record events after, serve /audit."""
    app.before_request(assign_request_id)
    app.after_request(record_and_tag)
    app.register_blueprint(bp)
