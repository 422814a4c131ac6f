"""Seam: every reach into rq-dashboard 0.9.0 (checked against that version), in one place.

rq-dashboard's views look up `Job`, `Queue`, `Worker`, `requeue_job` and a
few helpers as globals of `rq_dashboard.web`; those globals are replaced here
with the service's JSON, lane-aware readers (service.dashboard.records). Two
views are replaced whole: the job detail (it raised on every job with
dependencies) and requeue-all (so one unreadable job does not stop the rest).
Path parameters rq-dashboard would choke on, or that name something the
service never creates, are a 404 before its view runs.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import rq_dashboard
from flask import Flask, current_app, request, url_for
from redis import Redis
from rq import __version__ as rq_version
from rq.exceptions import NoSuchJobError
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer
from rq_dashboard.version import VERSION
from werkzeug.exceptions import NotFound

from service.api.errors import error_response
from service.core.errors import Conflict, ServiceError
from service.core.lanes import LANES
from service.dashboard.records import (
    DashboardJob,
    DashboardQueue,
    DashboardWorker,
    current_job,
    job_detail,
    job_row,
    refuse_pickle,
)
from service.jobs import operations
from service.jobs.model import ServiceJob

CHECKED_VERSION = "0.9.0"
REGISTRY_NAMES = ("queued", "scheduled", "deferred", "started", "finished", "failed", "canceled")
MAX_PER_PAGE = 200
# What each rq-dashboard path parameter may be; anything else is a 404.
VALID_VIEW_ARGS = {
    "instance_number": lambda v: v == 0,  # one Redis: the app's own
    "queue_name": lambda v: v is None or v in LANES,
    "registry_name": lambda v: v in REGISTRY_NAMES,
    "order": lambda v: v in ("asc", "dsc"),
    "per_page": lambda v: re.fullmatch(r"[0-9]{1,3}", str(v)) is not None and 1 <= int(v) <= MAX_PER_PAGE,
    "page": lambda v: re.fullmatch(r"[0-9]{1,9}", str(v)) is not None and int(v) >= 1,
    "job_id": lambda v: operations.JOB_ID.fullmatch(v) is not None,
}


def check_view_args() -> None:
    """Before an rq-dashboard view: 404 for a path parameter outside what the service creates."""
    if request.blueprint != rq_dashboard.blueprint.name:
        return
    for name, value in (request.view_args or {}).items():
        valid = VALID_VIEW_ARGS.get(name)
        if valid is not None and not valid(value):
            raise NotFound(f"no such {name.replace('_', ' ')}")


def instance_labels(urls: str | list[str] | tuple[str, ...]) -> list[str]:
    """The navbar's name for each Redis: scheme, host, port and database; never a password or a file path."""
    labels = []
    for url in [urls] if isinstance(urls, str) else urls:
        parts = urlsplit(url)
        labels.append(f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}")
    return labels


def page_context(active_tab: str) -> dict[str, Any]:
    """What rq-dashboard's base.html and navbar need, for a page of the service's own in its look."""
    return {
        "active_tab": active_tab,
        "current_instance": 0,
        "instance_list": instance_labels(current_app.config["RQ_DASHBOARD_REDIS_URL"]),
        "rq_url_prefix": url_for("rq_dashboard.queues_overview"),
        "rq_dashboard_version": VERSION,
        "rq_version": rq_version,
    }


def requeue_job(job_id: str, connection: Redis, **_: Any) -> None:
    """Requeue a failed job as the API does (JSON, its lane's doorbell); 409 for a job it cannot read."""
    if DashboardJob.fetch(job_id, connection=connection).unreadable:
        raise Conflict(f"job {job_id!r} cannot be read, so it cannot be requeued; delete it instead")
    operations.requeue(connection, job_id)


def requeue_all(queue_name: str) -> dict[str, Any]:
    """Requeue every failed job of a lane that can be requeued; skip the rest."""
    connection = current_app.redis_conn  # type: ignore[attr-defined]
    registry = FailedJobRegistry(queue_name, connection=connection, job_class=ServiceJob, serializer=JSONSerializer)
    count = 0
    for job_id in registry.get_job_ids(cleanup=False):
        try:
            requeue_job(job_id, connection)
        except (NoSuchJobError, ServiceError):
            continue
        count += 1
    return {"status": "OK", "count": count}


def job_info(instance_number: int, job_id: str) -> dict[str, Any]:
    """The job page's data."""
    return job_detail(DashboardJob.fetch(job_id, connection=current_app.redis_conn))  # type: ignore[attr-defined]


def install(app: Flask) -> None:
    """Point rq-dashboard (registered on `app`) at the service's readers and replace the two views."""
    web = rq_dashboard.web
    if VERSION != CHECKED_VERSION:
        raise RuntimeError(f"service.dashboard.seam was checked against rq-dashboard {CHECKED_VERSION}, not {VERSION}")
    refuse_pickle()
    web.config.serializer = JSONSerializer
    # rq-dashboard builds a client from the URL on every request, without
    # timeouts or the TLS files; it gets the app's one client instead, which
    # also follows a Sentinel failover.
    web.from_url = lambda url, **_: (None, current_app.extensions["redis"])
    web.Job, web.Queue, web.Worker = DashboardJob, DashboardQueue, DashboardWorker
    web.serialize_job, web.serialize_current_job = job_row, current_job
    web.requeue_job = requeue_job
    web.escape_format_instance_list = instance_labels
    app.view_functions["rq_dashboard.job_info"] = web.jsonify(job_info)
    app.view_functions["rq_dashboard.requeue_all"] = web.jsonify(requeue_all)
    app.before_request(check_view_args)
    app.register_error_handler(NoSuchJobError, lambda _: error_response(404, "job_not_found", "no such job"))
