"""Monitoring endpoints: lanes, workers and registered tasks."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from service.api.context import redis
from service.api.openapi import document
from service.ops import metrics, monitor
from service.tasks.registry import REGISTRY

bp = Blueprint("monitor", __name__)


class QueueOut(BaseModel):
    name: str
    queued: int
    started: int
    scheduled: int
    deferred: int
    failed: int
    finished: int
    canceled: int
    groups: int


class QueueList(BaseModel):
    queues: list[QueueOut]
    next_cursor: str | None


class WorkerOut(BaseModel):
    name: str
    lanes: list[str]
    state: str
    current_job: str | None
    successful_jobs: int
    failed_jobs: int
    total_working_seconds: float
    birth: str | None
    last_heartbeat: str | None
    pid: int | None
    hostname: str | None


class WorkerList(BaseModel):
    workers: list[WorkerOut]
    next_cursor: str | None


class TaskList(BaseModel):
    tasks: list[dict[str, Any]]
    next_cursor: str | None


@bp.get("/queues")
@document(200, QueueList, tags=("monitoring",))
def queues() -> Response:
    """Per lane: queued, started, scheduled, deferred, failed, finished and canceled counts."""
    return jsonify({"queues": monitor.queue_counts(redis()), "next_cursor": None})


@bp.get("/workers")
@document(200, WorkerList, tags=("monitoring",))
def workers() -> Response:
    """Live workers: name, lanes, state, current job, counts, last heartbeat."""
    return jsonify({"workers": monitor.workers(redis()), "next_cursor": None})


@bp.get("/metrics")
def metrics_text() -> Response:
    """Prometheus text format: job counters and durations, queue depth and age, workers, schedules."""
    return Response(metrics.render(redis()), headers={"Content-Type": CONTENT_TYPE_LATEST})


@bp.get("/tasks")
@document(200, TaskList, tags=("monitoring",))
def tasks() -> Response:
    """Registered tasks with their defaults."""
    return jsonify({"tasks": [spec.to_dict() for spec in REGISTRY.all()], "next_cursor": None})
