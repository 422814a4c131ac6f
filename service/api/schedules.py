"""Schedule endpoints: upsert, read, list, delete, pause/resume, run now, runs, preview, backfill."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import Field

from service.api.audit import ride_along
from service.api.body import json_body
from service.api.context import redis, settings
from service.api.openapi import document
from service.api.query import query
from service.core.errors import InvalidField, MalformedRequest
from service.jobs.schemas import Query, QueryInt
from service.schedules import operations as schedules
from service.schedules.spec import ScheduleSpec

bp = Blueprint("schedules", __name__)
TAGS = ("schedules",)


class ListQuery(Query):
    """GET /schedules: a page of `limit` schedules after the id `cursor` (capped by MAX_PAGE_SIZE)."""

    limit: QueryInt = Field(default=100, ge=1)
    cursor: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,100}$")


class RunsQuery(Query):
    limit: QueryInt = Field(default=50, ge=1, le=schedules.RUNS_PAGE)


class PreviewQuery(Query):
    count: QueryInt = Field(default=10, ge=1, le=schedules.MAX_PREVIEW)


def _object_body(optional: bool = False) -> dict[str, Any]:
    if optional and not request.get_data(cache=True).strip():
        return {}
    data = json_body()
    if not isinstance(data, dict):
        raise MalformedRequest("request body must be a JSON object")
    return data


@bp.get("/schedules")
@document(200, None, query=ListQuery, tags=TAGS)
def list_schedules() -> Response:
    """List schedules in id order: {"schedules": [...], "next_cursor": ...}."""
    args = query(ListQuery)
    return jsonify(schedules.list_schedules(redis(), args.cursor, args.limit, max_page=settings().limits.page_size))


@bp.put("/schedules/<schedule_id>")
@document(200, None, json=ScheduleSpec, tags=TAGS, also={201: None})
def put_schedule(schedule_id: str) -> tuple[Response, int]:
    """Create (201) or replace (200) the schedule `schedule_id`; an identical body changes nothing."""
    body, limits = _object_body(), settings().limits
    data, created = schedules.upsert(redis(), schedule_id, body, limits=limits, audit=ride_along())
    return jsonify(data), 201 if created else 200


@bp.get("/schedules/<schedule_id>")
@document(200, None, tags=TAGS)
def get_schedule(schedule_id: str) -> Response:
    """Return one schedule with next_run_at, last_run_at, last_job_id and its counters."""
    return jsonify(schedules.get(redis(), schedule_id))


@bp.delete("/schedules/<schedule_id>")
@document(204, None, tags=TAGS)
def delete_schedule(schedule_id: str) -> tuple[str, int]:
    """Remove a schedule (its past runs' jobs stay)."""
    schedules.delete(redis(), schedule_id)
    return "", 204


@bp.post("/schedules/<schedule_id>/pause")
@document(200, None, tags=TAGS)
def pause_schedule(schedule_id: str) -> Response:
    """Pause a schedule; optional body {"note": "..."}."""
    body = _object_body(optional=True)
    if set(body) - {"note"}:
        raise InvalidField(sorted(set(body) - {"note"})[0], "unknown field; only note is accepted")
    return jsonify(schedules.pause(redis(), schedule_id, note=body.get("note") or ""))


@bp.post("/schedules/<schedule_id>/resume")
@document(200, None, tags=TAGS)
def resume_schedule(schedule_id: str) -> Response:
    """Resume a paused schedule from its next due time after now."""
    return jsonify(schedules.resume(redis(), schedule_id))


@bp.post("/schedules/<schedule_id>/run")
@document(202, None, tags=TAGS)
def run_schedule(schedule_id: str) -> tuple[Response, int]:
    """Enqueue one run now; 202 with the run's job."""
    return jsonify(schedules.run_now(redis(), schedule_id)), 202


@bp.get("/schedules/<schedule_id>/runs")
@document(200, None, query=RunsQuery, tags=TAGS)
def schedule_runs(schedule_id: str) -> Response:
    """Recent runs, newest first: scheduled_for, job_id, status (including missed and skipped)."""
    return jsonify(schedules.runs(redis(), schedule_id, query(RunsQuery).limit))


@bp.get("/schedules/<schedule_id>/preview")
@document(200, None, query=PreviewQuery, tags=TAGS)
def preview_schedule(schedule_id: str) -> Response:
    """The next `count` due times of a saved schedule, in UTC and in its zone."""
    return jsonify(schedules.preview_saved(redis(), schedule_id, query(PreviewQuery).count))


@bp.post("/schedules/preview")
@document(200, None, json=ScheduleSpec, query=PreviewQuery, tags=TAGS)
def preview_unsaved() -> Response:
    """The next `count` due times of an unsaved schedule body (validated like PUT)."""
    return jsonify(schedules.preview_body(redis(), _object_body(), query(PreviewQuery).count))


@bp.post("/schedules/<schedule_id>/backfill")
@document(202, None, tags=TAGS)
def backfill_schedule(schedule_id: str) -> tuple[Response, int]:
    """One run per due time in the past range {"from": ..., "to": ...}; at most 1000, none twice."""
    return jsonify(schedules.backfill(redis(), schedule_id, _object_body())), 202
