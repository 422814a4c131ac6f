"""Job endpoints: enqueue a registered task, read a job back."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service import jobs
from service.api.body import parse
from service.api.context import redis
from service.schemas import JobRequest

bp = Blueprint("jobs", __name__)


@bp.post("/jobs")
def create_job() -> tuple[Response, int]:
    """Enqueue one job; 202 with the job."""
    job = jobs.enqueue(redis(), parse(JobRequest))
    return jsonify(jobs.describe(job)), 202


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    """Return one job."""
    return jsonify(jobs.describe(jobs.fetch(redis(), job_id)))
