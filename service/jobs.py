"""Jobs: enqueue a registered task, read a job back, and describe it as JSON.

The domain layer for one-off jobs. HTTP views and the CLI call these
functions and nothing below them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq.exceptions import NoSuchJobError

from service.errors import JobNotFound
from service.queues import ServiceJob, get_queue
from service.schemas import JobRequest
from service.task_registry import REGISTRY

JOB_ID_MAX_LENGTH = 200


def enqueue(connection: Redis, request: JobRequest) -> ServiceJob:
    """Enqueue `request` with the task's defaults; raise UnknownTask/UnknownQueue before writing anything."""
    spec = REGISTRY.get(request.task)
    queue = get_queue(request.queue or spec.queue, connection)
    job = queue.enqueue_call(
        spec.name,
        args=list(request.args),
        kwargs=dict(request.kwargs),
        timeout=spec.timeout_seconds,
        result_ttl=spec.result_ttl_seconds,
        description=spec.name,
    )
    assert isinstance(job, ServiceJob)
    return job


def fetch(connection: Redis, job_id: str) -> ServiceJob:
    """Return the stored job `job_id`; raise JobNotFound when there is none."""
    if not job_id or len(job_id) > JOB_ID_MAX_LENGTH:
        raise JobNotFound(f"no job with id {job_id[:JOB_ID_MAX_LENGTH]!r}")
    try:
        return ServiceJob.fetch(job_id, connection=connection)
    except NoSuchJobError:
        raise JobNotFound(f"no job with id {job_id!r}") from None


def describe(job: ServiceJob) -> dict[str, Any]:
    """Return the JSON form of `job` (SPEC §5 job fields)."""
    status = job.get_status(refresh=False)
    result, error = _outcome(job, status)
    data: dict[str, Any] = {
        "id": job.id,
        "task": job.func_name,
        "queue": job.origin,
        "status": str(status.value if status is not None else "unknown"),
        "args": list(job.args),
        "kwargs": dict(job.kwargs),
        "result": result,
        "error": error,
        "attempts": job.attempts,
        "enqueued_at": isotime(job.enqueued_at),
        "started_at": isotime(job.started_at),
        "ended_at": isotime(job.ended_at),
    }
    meta = job.meta or {}
    if "schedule_id" in meta:
        data["schedule_id"] = meta["schedule_id"]
        data["scheduled_for"] = meta.get("scheduled_for")
    return data


def _outcome(job: ServiceJob, status: Any) -> tuple[Any, str | None]:
    if status is None or status.value not in ("finished", "failed", "stopped"):
        return None, None
    latest = job.latest_result()
    if latest is None:
        return None, None
    if latest.type == latest.Type.SUCCESSFUL:
        return latest.return_value, None
    lines = (latest.exc_string or "").strip().splitlines()
    return None, lines[-1] if lines else status.value


def isotime(moment: datetime | None) -> str | None:
    """Return `moment` as ISO 8601 UTC with a Z suffix (naive values are RQ's UTC)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
