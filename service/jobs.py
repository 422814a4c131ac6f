"""Jobs: read, list, cancel and requeue jobs, and describe them as JSON.

The domain layer for one-off jobs after they are enqueued (service.enqueue
creates them). HTTP views and the CLI call these functions and nothing below.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq.command import send_stop_job_command
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.registry import (
    BaseRegistry,
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.results import Result

from service.errors import Conflict, InvalidField, JobNotFound
from service.lanes import LANES, check_lane
from service.queues import ServiceJob, ServiceQueue
from service.schemas import STATUSES, JobRequest

JOB_ID_MAX_LENGTH = 200
# RQ's own rule for ids (it raises ValueError on anything else).
JOB_ID = re.compile(rf"^[A-Za-z0-9_-]{{1,{JOB_ID_MAX_LENGTH}}}$")
CANCELABLE = frozenset({"queued", "scheduled", "deferred"})
REQUEUEABLE = frozenset({"failed", "stopped"})
STOP_WAIT_SECONDS = 3.0
REGISTRIES: dict[str, type[BaseRegistry]] = {
    "started": StartedJobRegistry,
    "scheduled": ScheduledJobRegistry,
    "deferred": DeferredJobRegistry,
    "finished": FinishedJobRegistry,
    "failed": FailedJobRegistry,
    "stopped": FailedJobRegistry,  # RQ files stopped jobs with the failed ones
    "canceled": CanceledJobRegistry,
}


def enqueue(connection: Redis, request: JobRequest) -> ServiceJob:
    """Enqueue one job from Python code and return it (the existing one for a repeated idempotency key)."""
    from service.enqueue import enqueue as enqueue_request

    return enqueue_request(connection, request)[0]


def fetch(connection: Redis, job_id: str) -> ServiceJob:
    """Return the stored job `job_id`; raise JobNotFound when there is none."""
    if not JOB_ID.match(job_id):
        raise JobNotFound(f"no job with id {job_id[:JOB_ID_MAX_LENGTH]!r}")
    try:
        return ServiceJob.fetch(job_id, connection=connection)
    except NoSuchJobError:
        raise JobNotFound(f"no job with id {job_id!r}") from None


def status_of(job: ServiceJob) -> str:
    status = job.get_status(refresh=False)
    return str(status.value) if status is not None else "unknown"


def cancel(connection: Redis, job_id: str) -> ServiceJob:
    """Cancel a queued, scheduled or deferred job; stop a running one; Conflict if it has ended."""
    job = fetch(connection, job_id)
    status = status_of(job)
    if status in CANCELABLE:
        job.cancel()
    elif status == "started":
        send_stop_job_command(connection, job.id, serializer=job.serializer)
        _wait_for_status(job, "started")
    else:
        raise Conflict(f"job {job_id!r} is {status}; only queued, scheduled, deferred or started jobs can be canceled")
    return fetch(connection, job_id)


def requeue(connection: Redis, job_id: str) -> ServiceJob:
    """Put a failed (or stopped) job back in its lane; Conflict for any other status."""
    job = fetch(connection, job_id)
    status = status_of(job)
    if status not in REQUEUEABLE:
        raise Conflict(f"job {job_id!r} is {status}; only failed or stopped jobs can be requeued")
    FailedJobRegistry(job.origin, connection=connection, job_class=ServiceJob, serializer=job.serializer).requeue(job)
    return fetch(connection, job_id)


def requeue_all_failed(connection: Redis) -> list[str]:
    """Requeue every failed or stopped job of every lane; return their ids."""
    requeued = []
    for lane in LANES:
        registry = FailedJobRegistry(lane, connection=connection, job_class=ServiceJob)
        for job_id in registry.get_job_ids():
            try:
                registry.requeue(job_id)
                requeued.append(job_id)
            except (NoSuchJobError, ValueError):
                continue  # vanished or already requeued meanwhile
    return requeued


def _wait_for_status(job: ServiceJob, old: str) -> None:
    """Give the worker a moment to act on a stop command, so the answer reads `stopped`."""
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while time.monotonic() < deadline and status_of(job) == old:
        time.sleep(0.05)
        job.get_status(refresh=True)


def list_jobs(
    connection: Redis, status: str | None, queue: str | None, limit: int, cursor: str | None
) -> tuple[list[ServiceJob], str | None]:
    """Return up to `limit` jobs by registry (and lane), and the cursor of the next page."""
    lanes = [check_lane(queue)] if queue else list(LANES)
    statuses = [status] if status else list(STATUSES)
    sources = [(s, lane) for s in statuses for lane in lanes]
    index, offset = _parse_cursor(cursor, len(sources))
    found: list[ServiceJob] = []
    while index < len(sources) and len(found) < limit:
        wanted, lane = sources[index]
        count = limit - len(found)
        ids = _job_ids(connection, wanted, lane, offset, count)
        jobs = ServiceJob.fetch_many(ids, connection=connection)
        found.extend(j for j in jobs if j is not None and status_of(j) == wanted)
        if len(ids) < count:
            index, offset = index + 1, 0
        else:
            offset += len(ids)
    return found, (f"{index}.{offset}" if index < len(sources) else None)


def _parse_cursor(cursor: str | None, sources: int) -> tuple[int, int]:
    if not cursor:
        return 0, 0
    try:
        index, offset = (int(part) for part in cursor.split(".", 1))
    except ValueError:
        raise InvalidField("cursor", "not a cursor this API returned") from None
    if not (0 <= index < sources and offset >= 0):
        raise InvalidField("cursor", "not a cursor this API returned")
    return index, offset


def _job_ids(connection: Redis, status: str, lane: str, offset: int, count: int) -> list[str]:
    if status == "queued":
        return ServiceQueue(lane, connection=connection).get_job_ids(offset, count)
    registry = REGISTRIES[status](lane, connection=connection, job_class=ServiceJob)
    return registry.get_job_ids(offset, offset + count - 1, desc=True, cleanup=False)


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
    """Return the JSON form of `job` (SPEC §5 job fields); `latest` is its latest result if already read."""
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
        "enqueued_at": isotime(job.enqueued_at),
        "started_at": isotime(job.started_at),
        "ended_at": isotime(job.ended_at),
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
