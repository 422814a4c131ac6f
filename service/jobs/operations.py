"""Job operations: read (or wait for the end of), list, cancel and requeue jobs.

The domain layer for one-off jobs after they are enqueued (service.jobs.enqueue
creates them). HTTP views and the CLI call these functions and nothing below.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from redis import Redis
from rq.command import send_stop_job_command
from rq.exceptions import NoSuchJobError
from rq.registry import (
    BaseRegistry,
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)

from service.core.errors import Conflict, InvalidField, JobNotFound
from service.core.lanes import LANES, check_lane
from service.jobs import batches
from service.jobs.describe import STATUSES, status_of
from service.jobs.model import JOB_ID, JOB_ID_MAX_LENGTH, ServiceJob, ServiceQueue
from service.jobs.waits import Waited, WaitHub

CANCELABLE = frozenset({"queued", "scheduled", "deferred"})
# A job in one of these has ended: it will not run (again) by itself.
FINAL = frozenset({"finished", "failed", "stopped", "canceled"})
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


def fetch(connection: Redis, job_id: str) -> ServiceJob:
    """Return the stored job `job_id`; raise JobNotFound when there is none."""
    if not JOB_ID.fullmatch(job_id):
        raise JobNotFound(f"no job with id {job_id[:JOB_ID_MAX_LENGTH]!r}")
    try:
        return ServiceJob.fetch(job_id, connection=connection)
    except NoSuchJobError:
        raise JobNotFound(f"no job with id {job_id!r}") from None


def wait(hub: WaitHub, connection: Redis, job_id: str, seconds: float) -> Waited[ServiceJob]:
    """The job once it has ended, or after `seconds` as it then is; JobNotFound when there is none."""
    return hub.wait(job_id, seconds, lambda: fetch(connection, job_id), lambda job: status_of(job) in FINAL)


def cancel(connection: Redis, job_id: str) -> ServiceJob:
    """Cancel a queued, scheduled or deferred job; stop a running one; Conflict if it has ended."""
    job = fetch(connection, job_id)
    status = status_of(job)
    if status in CANCELABLE:
        with connection.pipeline() as pipe:  # MULTI: canceled, and counted in its batch, at once
            job.cancel(pipeline=pipe)
            batches.end(pipe, job.id, job.batch_id, "canceled")
            pipe.execute()
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


def requeue_all_failed(connection: Redis, progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Requeue every failed or stopped job of every lane; return their ids. `progress(done, total)` after each."""
    registries = [FailedJobRegistry(lane, connection=connection, job_class=ServiceJob) for lane in LANES]
    found = [(registry, registry.get_job_ids()) for registry in registries]
    total, done, requeued = sum(len(ids) for _, ids in found), 0, []
    for registry, job_ids in found:
        for job_id in job_ids:
            try:
                registry.requeue(job_id)
                requeued.append(job_id)
            except (NoSuchJobError, ValueError):
                pass  # vanished or already requeued meanwhile
            done += 1
            if progress:
                progress(done, total)
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
