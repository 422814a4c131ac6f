"""Job descriptions: a stored job as the API, the CLI and hooks show it (JSON fields, ISO times)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq.exceptions import DeserializationError
from rq.results import Result

from service.jobs.model import ServiceJob

STATUSES = ("queued", "scheduled", "deferred", "started", "finished", "failed", "canceled", "stopped")


def status_of(job: ServiceJob) -> str:
    status = job.get_status(refresh=False)
    return str(status.value) if status is not None else "unknown"


ENDED = frozenset({"finished", "failed", "stopped"})
UNREAD: Any = object()  # describe(): the latest result is not read yet


def describe_many(connection: Redis, jobs: list[ServiceJob]) -> list[dict[str, Any]]:
    """Describe `jobs` as `describe` does, reading every ended job's latest result in one round trip."""
    ended = [job for job in jobs if status_of(job) in ENDED]
    with connection.pipeline(transaction=False) as pipe:
        for job in ended:
            pipe.xrevrange(Result.get_key(job.id), "+", "-", count=1)
        replies = pipe.execute() if ended else []
    latest: dict[str, Result | None] = {}
    for job, reply in zip(ended, replies, strict=True):
        latest[job.id] = (
            Result.restore(job.id, reply[0][0].decode(), reply[0][1], connection, job.serializer) if reply else None
        )
    return [describe(job, latest.get(job.id)) for job in jobs]


def describe(job: ServiceJob, latest: Result | None = UNREAD) -> dict[str, Any]:
    """Return the JSON form of `job` (the job fields of the API); `latest` is its latest result if already read."""
    status = status_of(job)
    result, error = _outcome(job, status, latest)
    try:
        task, args, kwargs = job.func_name, list(job.args), dict(job.kwargs)
    except DeserializationError:
        # Not JSON (e.g. a pickle planted in Redis): shown, never unpickled or run.
        task, args, kwargs = None, [], {}
        error = error or "DeserializationError: the job's data is not JSON; it is never loaded or run"
    data: dict[str, Any] = {
        "id": job.id,
        "task": task,
        "queue": job.origin,
        "status": status,
        "args": args,
        "kwargs": kwargs,
        "result": result,
        "error": error,
        "attempts": job.attempts,
        "group": job.group,
        "batch_id": job.batch_id,
        "enqueued_at": isotime(job.enqueued_at),
        "started_at": isotime(job.started_at),
        "ended_at": isotime(job.ended_at),
        "progress": job.progress,
    }
    meta = job.meta or {}
    if "schedule_id" in meta:
        data["schedule_id"] = meta["schedule_id"]
        data["scheduled_for"] = meta.get("scheduled_for")
    return data


def _outcome(job: ServiceJob, status: str, latest: Result | None) -> tuple[Any, str | None]:
    if status not in ENDED:
        return None, None
    if latest is UNREAD:
        latest = job.latest_result()
    if latest is None:
        return None, "stopped by request" if status == "stopped" else None
    if latest.type == latest.Type.SUCCESSFUL:
        return latest.return_value, None
    lines = (latest.exc_string or "").strip().splitlines()
    return None, lines[-1] if lines else status


def isotime(moment: datetime | None) -> str | None:
    """Return `moment` as ISO 8601 UTC with a Z suffix (naive values are RQ's UTC)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
