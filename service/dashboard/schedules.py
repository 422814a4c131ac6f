"""Schedules view: a server-rendered page under /dashboard listing schedules, with pause/resume/run.

rq-dashboard shows no schedules; this page does, in its look. The guard in
service.dashboard.mount covers it (Basic auth, no cross-site state changes).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from rq_dashboard.web import inject_interval
from werkzeug.wrappers import Response

from service.core.keys import job_key
from service.dashboard.seam import page_context
from service.schedules import operations as schedules

bp = Blueprint("dashboard_schedules", __name__, template_folder="templates")
# rq-dashboard gives its own pages the poll interval their shared script needs; this page shares it.
bp.context_processor(inject_interval)
PAGE_SIZE = 100


def row(schedule: dict[str, Any], last_status: str | None) -> dict[str, Any]:
    """The fields the page shows for one schedule."""
    zone = schedule.get("timezone") or "UTC"
    trigger = (
        f"cron {schedule['cron']}" if schedule.get("cron")
        else f"every {schedule['interval']} s" if schedule.get("interval")
        else f"once at {schedule.get('at')}"
    )  # fmt: skip
    next_utc = schedule.get("next_run_at")
    next_local = None
    if next_utc:
        next_local = datetime.fromisoformat(next_utc).astimezone(ZoneInfo(zone)).isoformat(timespec="minutes")
    return {**schedule, "trigger": trigger, "zone": zone, "next_local": next_local, "last_status": last_status}


def last_statuses(items: list[dict[str, Any]]) -> dict[str, str | None]:
    """Return the status of each schedule's last run job (one pipelined read)."""
    redis = current_app.extensions["redis"]
    ids = [s.get("last_job_id") for s in items]
    with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(job_key(job_id), "status") if job_id else pipe.echo("")
        found = pipe.execute()
    return {s["id"]: (v.decode() if v else None) for s, v in zip(items, found, strict=True)}


@bp.get("/schedules")
def schedules_page() -> str:
    """List schedules with trigger, zone, next run (UTC and local), last run and paused state."""
    page = schedules.list_schedules(current_app.extensions["redis"], request.args.get("cursor") or None, PAGE_SIZE)
    statuses = last_statuses(page["schedules"])
    rows = [row(s, statuses.get(s["id"])) for s in page["schedules"]]
    return render_template("schedules.html", rows=rows, next_cursor=page["next_cursor"], **page_context("schedules"))


@bp.post("/schedules/<schedule_id>/<action>")
def schedule_action(schedule_id: str, action: str) -> Response:
    """Pause, resume or run a schedule now, then go back to the list."""
    redis = current_app.extensions["redis"]
    if action == "pause":
        schedules.pause(redis, schedule_id, note=request.form.get("note", "paused from the dashboard"))
    elif action == "resume":
        schedules.resume(redis, schedule_id)
    elif action == "run":
        schedules.run_now(redis, schedule_id)
    else:
        return Response(status=404)
    return redirect(url_for(".schedules_page"), code=303)
