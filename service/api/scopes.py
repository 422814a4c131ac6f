"""Route policy: the one table of every route, API and dashboard, with the scope it needs and what is audited.

Keyed by Flask endpoint. `scope` None means public (the probes). `audit`
names the action and target recorded when the route answers 2xx or 3xx
(service.api.audit); reads and enqueues are not audited. A route missing
here needs `admin` (tests/test_scopes.py fails on it first), so a new route,
ours or an rq-dashboard upgrade's, is never open by accident.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    """What one endpoint needs and records: the scope, and the audit action and target (format strings)."""

    scope: str | None
    action: str | None = None
    target: str = ""


READ = Route("read")
ROUTES: dict[str, Route] = {
    "system.healthz": Route(None),
    "system.readyz": Route(None),
    "openapi.openapi": READ,
    "static": READ,  # Flask's own; rq-dashboard's base page links its favicon there (no file: 404)
    "monitor.queues": READ,
    "monitor.workers": READ,
    "monitor.metrics_text": READ,
    "monitor.tasks": READ,
    "jobs.create_job": Route("enqueue"),
    "jobs.create_jobs": Route("enqueue"),
    "jobs.list_jobs": READ,
    "jobs.get_job": READ,
    "jobs.cancel_job": Route("operate", "job.cancel", "{job_id}"),
    "jobs.requeue_job": Route("operate", "job.requeue", "{job_id}"),
    "schedules.list_schedules": READ,
    "schedules.get_schedule": READ,
    "schedules.schedule_runs": READ,
    "schedules.preview_schedule": READ,
    "schedules.preview_unsaved": READ,  # a POST that computes, stores nothing
    "schedules.put_schedule": Route("operate", "schedule.put", "{schedule_id}"),
    "schedules.delete_schedule": Route("operate", "schedule.delete", "{schedule_id}"),
    "schedules.pause_schedule": Route("operate", "schedule.pause", "{schedule_id}"),
    "schedules.resume_schedule": Route("operate", "schedule.resume", "{schedule_id}"),
    "schedules.run_schedule": Route("operate", "schedule.run", "{schedule_id}"),
    "schedules.backfill_schedule": Route("operate", "schedule.backfill", "{schedule_id}"),
    "audit.list_events": Route("admin"),
    # The dashboard: pages and data read; every action operates.
    "rq_dashboard.queues_overview": READ,
    "rq_dashboard.workers_overview": READ,
    "rq_dashboard.jobs_overview": READ,
    "rq_dashboard.job_view": READ,
    "rq_dashboard.list_queues": READ,
    "rq_dashboard.list_jobs": READ,
    "rq_dashboard.list_workers": READ,
    "rq_dashboard.job_info": READ,
    "rq_dashboard.favicon": READ,
    "rq_dashboard.static": READ,
    "rq_dashboard.delete_job_view": Route("operate", "job.delete", "{job_id}"),
    "rq_dashboard.requeue_job_view": Route("operate", "job.requeue", "{job_id}"),
    "rq_dashboard.requeue_all": Route("operate", "queue.requeue_failed", "{queue_name}"),
    "rq_dashboard.empty_queue": Route("operate", "queue.empty", "{queue_name}/{registry_name}"),
    "rq_dashboard.compact_queue": Route("operate", "queue.compact", "{queue_name}"),
    "dashboard_schedules.schedules_page": READ,
    "dashboard_schedules.schedule_action": Route("operate", "schedule.{action}", "{schedule_id}"),
    "dashboard_charts.charts_page": READ,
    "dashboard_charts.chart_data": READ,
    "dashboard_charts.static": READ,
}
# What an endpoint missing from the table needs.
UNLISTED = Route("admin")


def route_for(endpoint: str) -> Route:
    """Return the policy of `endpoint`."""
    return ROUTES.get(endpoint, UNLISTED)
