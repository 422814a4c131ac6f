"""Hooks: user code subscribes to job and schedule events; failures can also go to a webhook.

    from service.ops.hooks import on

    @on("job.failed")
    def page_someone(event: dict) -> None: ...

Subscribers run in the process where the event happens (a worker for job
events, the leading scheduler for schedule events). A subscriber that raises
is logged and ignored: a hook never changes a job's outcome. A task's
`webhook_url` receives its failure events as a POST, delivered by a job of its
own (`hooks.webhook` in service.tasks.webhook, lane `low`, 3 retries), so a
slow or dead endpoint costs the failed job nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from service.jobs.enqueue import InternalRequest, enqueue

log = logging.getLogger(__name__)

EVENTS = ("job.succeeded", "job.failed", "job.retried", "schedule.missed", "schedule.skipped")

Subscriber = Callable[[dict[str, Any]], None]
_subscribers: dict[str, list[Subscriber]] = {event: [] for event in EVENTS}


def on(event: str) -> Callable[[Subscriber], Subscriber]:
    """Subscribe the decorated function to `event` (one of EVENTS)."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; events are {', '.join(EVENTS)}")

    def subscribe(func: Subscriber) -> Subscriber:
        if func not in _subscribers[event]:
            _subscribers[event].append(func)
        return func

    return subscribe


def unsubscribe(event: str, func: Subscriber) -> None:
    """Remove `func` from `event`'s subscribers (tests, reloads)."""
    if func in _subscribers.get(event, []):
        _subscribers[event].remove(func)


def emit(event: str, **fields: Any) -> dict[str, Any]:
    """Call every subscriber of `event` with the event's fields; errors are logged, never raised."""
    payload = {"event": event, "time": datetime.now(UTC).isoformat(timespec="milliseconds"), **fields}
    for subscriber in list(_subscribers.get(event, ())):
        try:
            subscriber(payload)
        except Exception:
            log.exception("hook %s for %s failed; ignored", getattr(subscriber, "__name__", subscriber), event)
    return payload


def job_event(event: str, job: Any, **extra: Any) -> dict[str, Any]:
    """Emit a job event with the job's id, task, lane and attempts (and its schedule, for a run)."""
    meta = job.meta or {}
    fields = {
        "job_id": job.id,
        "task": job.task_name,
        "queue": job.origin,
        "attempts": getattr(job, "attempts", None),
        **{k: meta[k] for k in ("schedule_id", "scheduled_for") if k in meta},
        **extra,
    }
    payload = emit(event, **fields)
    if event == "job.failed":
        queue_webhook(job, payload)
    return payload


def queue_webhook(job: Any, payload: dict[str, Any]) -> None:
    """Enqueue delivery of a failure event to the task's webhook_url, if it has one; never raises."""
    spec = job.spec
    if spec is None or spec.webhook_url is None:
        return
    try:
        enqueue(job.connection, InternalRequest(task="hooks.webhook", args=[spec.webhook_url, payload]))
    except Exception:
        log.exception("could not queue the failure webhook of job %s", job.id)


def forward_schedule_event(event: str, schedule_id: str, count: int) -> None:
    """Turn the scheduler's missed/skipped/dropped notices into hook events (service.schedules.runs.emit calls it)."""
    if event == "missed":
        emit("schedule.missed", schedule_id=schedule_id, count=count)
    elif event in ("skipped", "dropped"):
        emit("schedule.skipped", schedule_id=schedule_id, count=count, reason=event)
