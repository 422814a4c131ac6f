"""Hooks: the service's one event bus: user code subscribes to job and schedule events.

    from service.ops.hooks import on

    @on("job.failed")
    def page_someone(event: dict) -> None: ...

Every event is a dict with `event`, `time` and its fields: a job event has
`job_id`, `task`, `queue`, `attempts` (and `error` on failure); a schedule
event has `schedule_id` and `count` (runs fired, missed, coalesced into a
later run, or skipped; `schedule.skipped` has `reason`: `skipped` by the
overlap policy or `dropped` because one run was already buffered).
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

EVENTS = (
    "job.succeeded",
    "job.failed",
    "job.retried",
    "schedule.fired",
    "schedule.missed",
    "schedule.coalesced",
    "schedule.skipped",
)

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


def emit(event: str, **fields: Any) -> None:
    """Call every subscriber of `event` with the event's fields; errors are logged, never raised."""
    subscribers = _subscribers.get(event)
    if subscribers:  # no event is built when nobody listens (the scheduler emits one per schedule fired)
        deliver(subscribers, payload(event, fields))


def payload(event: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"event": event, "time": datetime.now(UTC).isoformat(timespec="milliseconds"), **fields}


def deliver(subscribers: list[Subscriber], event: dict[str, Any]) -> None:
    for subscriber in list(subscribers):
        try:
            subscriber(event)
        except Exception:
            name = getattr(subscriber, "__name__", subscriber)
            log.exception("hook %s for %s failed; ignored", name, event["event"])


def job_event(event: str, job: Any, **extra: Any) -> None:
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
    found = payload(event, fields)
    deliver(_subscribers[event], found)
    if event == "job.failed":
        queue_webhook(job, found)


def queue_webhook(job: Any, event: dict[str, Any]) -> None:
    """Enqueue delivery of a failure event to the task's webhook_url, if it has one; never raises."""
    spec = job.spec
    if spec is None or spec.webhook_url is None:
        return
    try:
        enqueue(job.connection, InternalRequest(task="hooks.webhook", args=[spec.webhook_url, event]))
    except Exception:
        log.exception("could not queue the failure webhook of job %s", job.id)
