"""Job endpoints: enqueue (one or a batch), read, list, cancel, requeue."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service.api.body import parse
from service.api.context import redis, settings, waits
from service.api.openapi import document
from service.api.query import query
from service.jobs import describe as view
from service.jobs import enqueue
from service.jobs import operations as jobs
from service.jobs.schemas import BatchRequest, ErrorOut, JobList, JobOut, JobQuery, JobRequest, ListJobsQuery

bp = Blueprint("jobs", __name__)


class BatchOut(JobList):
    """POST /jobs/batch answer: the jobs in request order."""


@bp.post("/jobs")
@document(202, JobOut, json=JobRequest, tags=("jobs",), also={200: JobOut, 429: ErrorOut})
def create_job() -> tuple[Response, int]:
    """Enqueue one job: 202 with the job; 200 with the existing job for a repeated idempotency key."""
    outcome = enqueue.submit(redis(), [parse(JobRequest)], limits=settings().limits)[0]
    return jsonify(outcome.describe()), 202 if outcome.created else 200


@bp.post("/jobs/batch")
@document(202, BatchOut, json=BatchRequest, tags=("jobs",), also={429: ErrorOut})
def create_jobs() -> tuple[Response, int]:
    """Enqueue many jobs in one transaction; one invalid entry rejects the whole batch."""
    batch = parse(BatchRequest)
    outcomes = enqueue.submit(redis(), list(batch.jobs), batch=True, limits=settings().limits)
    return jsonify({"jobs": [outcome.describe() for outcome in outcomes], "next_cursor": None}), 202


@bp.get("/jobs")
@document(200, JobList, query=ListJobsQuery, tags=("jobs",))
def list_jobs() -> Response:
    """List jobs by status and lane, newest first within a registry, with a cursor."""
    args = query(ListJobsQuery)
    found, cursor = jobs.list_jobs(redis(), args.status, args.queue, args.limit, args.cursor)
    return jsonify({"jobs": view.describe_many(redis(), found), "next_cursor": cursor})


@bp.get("/jobs/<job_id>")
@document(200, JobOut, query=JobQuery, tags=("jobs",))
def get_job(job_id: str) -> Response:
    """Return one job; with `wait`, once it has ended or after `wait` seconds (at most 60), as it then is."""
    seconds = query(JobQuery).wait
    if seconds is None:
        return jsonify(view.describe(jobs.fetch(redis(), job_id)))
    waited = jobs.wait(waits(), redis(), job_id, seconds)
    response = jsonify(view.describe(waited.value))
    if not waited.held:  # this process holds as many waits as it may: the client asks again
        response.headers["Retry-After"] = "1"
    return response


@bp.post("/jobs/<job_id>/cancel")
@document(200, JobOut, tags=("jobs",))
def cancel_job(job_id: str) -> Response:
    """Cancel a queued, scheduled or deferred job; stop a running one (409 if it has ended)."""
    return jsonify(view.describe(jobs.cancel(redis(), job_id)))


@bp.post("/jobs/<job_id>/requeue")
@document(200, JobOut, tags=("jobs",))
def requeue_job(job_id: str) -> Response:
    """Requeue a failed job (409 if it has not failed)."""
    return jsonify(view.describe(jobs.requeue(redis(), job_id)))
