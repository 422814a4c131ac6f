"""Calendar endpoints: list, read, create or replace, and delete the date lists schedules skip."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from pydantic import Field

from service.api.body import json_body
from service.api.context import redis, settings
from service.api.openapi import document
from service.api.query import query
from service.jobs.schemas import Query, QueryInt
from service.schedules import calendars
from service.schedules.calendars import CalendarBody, CalendarList, CalendarOut

bp = Blueprint("calendars", __name__)
TAGS = ("calendars",)


class ListQuery(Query):
    """GET /calendars: a page of `limit` calendars after the id `cursor` (capped by MAX_PAGE_SIZE)."""

    limit: QueryInt = Field(default=100, ge=1)
    cursor: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,100}$")


@bp.get("/calendars")
@document(200, CalendarList, query=ListQuery, tags=TAGS)
def list_calendars() -> Response:
    """List calendars in id order: {"calendars": [...], "next_cursor": ...}."""
    args = query(ListQuery)
    return jsonify(calendars.list_calendars(redis(), args.cursor, args.limit, max_page=settings().limits.page_size))


@bp.put("/calendars/<calendar_id>")
@document(200, CalendarOut, json=CalendarBody, tags=TAGS, also={201: CalendarOut})
def put_calendar(calendar_id: str) -> tuple[Response, int]:
    """Create (201) or replace (200) a calendar of up to 10,000 dates; an identical body changes nothing."""
    data, created = calendars.put(redis(), calendar_id, json_body())
    return jsonify(data), 201 if created else 200


@bp.get("/calendars/<calendar_id>")
@document(200, CalendarOut, tags=TAGS)
def get_calendar(calendar_id: str) -> Response:
    """Return one calendar, with the number of schedules that skip its dates."""
    return jsonify(calendars.get(redis(), calendar_id))


@bp.delete("/calendars/<calendar_id>")
@document(204, None, tags=TAGS)
def delete_calendar(calendar_id: str) -> tuple[str, int]:
    """Remove a calendar; 409 while schedules skip its dates."""
    calendars.delete(redis(), calendar_id)
    return "", 204
