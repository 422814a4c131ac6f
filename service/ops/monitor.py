"""Monitor: counts per lane and the live workers, as the API and the CLI show them."""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq.worker import Worker

from service.core.keys import UNGROUPED, claimed_key, groups_key
from service.core.lanes import LANES
from service.jobs.describe import isotime
from service.jobs.model import ServiceJob, ServiceQueue
from service.jobs.operations import REGISTRIES
from service.ops.gauges import readable

COUNTED = ("started", "scheduled", "deferred", "failed", "finished", "canceled")


class WorkerRecord(Worker):
    """A registered worker read for display, on the caller's Redis client with its timeouts kept."""

    def _set_connection(self, connection: Redis) -> Redis:
        # RQ's Worker raises the client's socket timeout above its blocking
        # dequeue (415 s): on the web's shared client a frozen Redis would then
        # hang requests instead of answering 503. A record only reads.
        return connection

    def running_job_id(self) -> str | None:
        """The job it runs: its execution records' (RQ's way), or, before its heartbeat wrote them (a job
        younger than a beat: service.workers.heartbeat), the head of its claimed list while it is busy."""
        found = self.get_current_job_id()
        if found is None and str(self.get_state()) == "busy":
            head = self.connection.lindex(claimed_key(self.name), 0)
            found = head.decode("utf-8", "surrogateescape") if head is not None else None
        return found


def queue_counts(connection: Redis) -> list[dict[str, Any]]:
    """Return per lane the number of queued, started, scheduled, deferred, failed, finished, canceled jobs,
    and of groups with waiting jobs."""
    with connection.pipeline(transaction=False) as pipe:
        for lane in LANES:
            pipe.llen(ServiceQueue(lane, connection=connection).key)
            for status in COUNTED:
                pipe.zcard(REGISTRIES[status](lane, connection=connection, job_class=ServiceJob).key)
        counts = [value or 0 for value in readable(pipe.execute(raise_on_error=False))]
    groups = group_counts(connection)
    width = 1 + len(COUNTED)
    rows = [counts[i * width : (i + 1) * width] for i in range(len(LANES))]
    return [
        {"name": lane, "queued": row[0], **dict(zip(COUNTED, row[1:], strict=True)), "groups": groups[lane]}
        for lane, row in zip(LANES, rows, strict=True)
    ]


def group_counts(connection: Redis) -> dict[str, int]:
    """Per lane, the number of groups with waiting jobs (jobs without a group are not counted)."""
    with connection.pipeline(transaction=False) as pipe:
        for lane in LANES:
            pipe.llen(groups_key(lane))
            pipe.lpos(groups_key(lane), UNGROUPED)
        found = readable(pipe.execute(raise_on_error=False))
    # A lane's turns list holds its groups, the lane head's turn, and the ungrouped group's if any.
    return {lane: max(0, (found[2 * i] or 0) - 1 - (found[2 * i + 1] is not None)) for i, lane in enumerate(LANES)}


def workers(connection: Redis) -> list[dict[str, Any]]:
    """Return every registered worker: name, lanes, state, current job id, counts, last heartbeat."""
    found = WorkerRecord.all(connection=connection)
    return sorted(
        (
            {
                "name": w.name,
                "lanes": w.queue_names(),
                "state": str(w.get_state()),
                "current_job": w.running_job_id(),
                "successful_jobs": w.successful_job_count,
                "failed_jobs": w.failed_job_count,
                "total_working_seconds": round(w.total_working_time, 3),
                "birth": isotime(w.birth_date),
                "last_heartbeat": isotime(w.last_heartbeat),
                "pid": w.pid,
                "hostname": w.hostname,
            }
            for w in found
        ),
        key=lambda w: w["name"],
    )
