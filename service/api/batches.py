"""Batch endpoint: a batch's tally (batches are created by POST /jobs/batch with on_complete)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service.api.context import redis
from service.api.openapi import document
from service.jobs import batches
from service.jobs.schemas import BatchOut

bp = Blueprint("batches", __name__)


@bp.get("/batches/<batch_id>")
@document(200, BatchOut, tags=("jobs",))
def get_batch(batch_id: str) -> Response:
    """Return a batch: total, finished, failed, canceled, pending, and its on_complete job's id once enqueued."""
    return jsonify(batches.read(redis(), batch_id))
