"""Job endpoints: enqueue (one or a batch), read, list, cancel, requeue."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from service.api.body import parse
from service.api.context import redis, settings, waits
from service.api.openapi import document
from service.api.query import query
from service.jobs import describe as view
from service.jobs import enqueue
from service.jobs import operations as jobs
from service.jobs.schemas import BatchRequest, ErrorOut, JobList, JobOut, JobQuery, JobRequest, ListJobsQuery
from service.jobs.writer import Submitted

bp = Blueprint("jobs", __name__)


class BatchAnswer(JobList):
    """POST /jobs/batch answer: the jobs in request order, and the batch's id when it has on_complete."""

    batch_id: str | None = None


def job_requests(body: JobRequest | BatchRequest) -> list[JobRequest]:
    """The job requests of a POST /jobs or POST /jobs/batch body."""
    return list(body.jobs) if isinstance(body, BatchRequest) else [body]


def enqueued(outcomes: list[Submitted], batch: bool, batch_id: str | None = None) -> tuple[dict[str, Any], int]:
    """The answer to an enqueue: the job (202, or 200 for a repeated idempotency key), or the batch's jobs (202)."""
    if batch:
        return {"jobs": [outcome.describe() for outcome in outcomes], "batch_id": batch_id, "next_cursor": None}, 202
    return outcomes[0].describe(), 202 if outcomes[0].created else 200


@bp.post("/jobs")
@document(202, JobOut, json=JobRequest, tags=("jobs",), also={200: JobOut, 429: ErrorOut})
def create_job() -> tuple[Response, int]:
    """Enqueue one job: 202 with the job; 200 with the existing job for a repeated idempotency key."""
    body, status = enqueued(enqueue.submit(redis(), [parse(JobRequest)], limits=settings().limits), batch=False)
    return jsonify(body), status


@bp.post("/jobs/batch")
@document(202, BatchAnswer, json=BatchRequest, tags=("jobs",), also={429: ErrorOut})
def create_jobs() -> tuple[Response, int]:
    """Enqueue many jobs in one transaction; one invalid entry rejects the whole batch.

    With `on_complete`, the jobs form a batch (GET /batches/<id>) whose callback is enqueued once
    every job has ended, with the keyword `batch`: {"id", "total", "finished", "failed", "canceled"}.
    """
    batch = parse(BatchRequest)
    limits = settings().limits
    if batch.on_complete is None:
        outcomes, batch_id = enqueue.submit(redis(), list(batch.jobs), batch=True, limits=limits), None
    else:
        outcomes, batch_id = enqueue.submit_batch(redis(), list(batch.jobs), batch.on_complete, limits=limits)
    body, status = enqueued(outcomes, batch=True, batch_id=batch_id)
    return jsonify(body), status


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
