"""Records: jobs, lanes and workers as the dashboard reads them: JSON only, and never a 500 for what Redis holds.

rq-dashboard reads with RQ's default serializer (pickle) in several places
and raises on any field it cannot parse. Its views read through these
classes instead (service.dashboard.seam puts them in): every job is loaded
with the JSON serializer, a job, worker or execution hash that cannot be
read is shown as unreadable, and pickle itself refuses to load in the web
process, so a path missed here fails closed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.results import Result
from rq.serializers import DefaultSerializer, JSONSerializer
from rq_dashboard.web import format_job_description, serialize_date

from service.core.lanes import LANES
from service.jobs import batches
from service.jobs.damage import BATCH_FIELD, is_job_id
from service.jobs.describe import status_of
from service.jobs.model import ServiceJob, ServiceQueue
from service.jobs.operations import REGISTRIES
from service.ops.monitor import WorkerRecord

T = TypeVar("T")
UNREADABLE = "unreadable: not stored in the form this service writes (never loaded)"


def readable(read: Callable[[], T], default: T) -> T:
    """Return `read()`, or `default` when what Redis holds cannot be read (a Redis error still raises)."""
    try:
        return read()
    except RedisError:
        raise
    except Exception:
        return default


def _refuse_pickle(data: bytes) -> Any:
    raise DeserializationError("pickled data is never loaded by this service")


def refuse_pickle() -> None:
    """Make RQ's default serializer (pickle) refuse to load anything in this process."""
    DefaultSerializer.loads = staticmethod(_refuse_pickle)  # type: ignore[assignment]


class DashboardJob(ServiceJob):
    """A job read for display: JSON only; a hash it cannot parse is marked unreadable instead of raising."""

    unreadable = False

    def restore(self, raw_data: Any) -> Any:
        try:
            result = super().restore(raw_data)
        except (NoSuchJobError, RedisError):
            raise
        except Exception:
            result = None
            self.damage = self.damage or "unparsable"
        if self.damage:  # the fields the service would not have written are left out: show it as unreadable
            self.unreadable = True
            self.description = UNREADABLE
        return result

    def delete(self, pipeline: Any = None, remove_from_queue: bool = True, delete_dependents: bool = False) -> None:
        if not self.unreadable:
            # A job deleted before it ended is canceled for its batch (a job that had ended was counted then).
            with self.connection.pipeline() as pipe:
                super().delete(pipe, remove_from_queue, delete_dependents)
                batches.end(pipe, self.id, self.batch_id, "canceled")
                pipe.execute()
            return None
        # RQ's delete reads the hash's origin and status; here neither can be trusted.
        with self.connection.pipeline() as pipe:
            for lane in LANES:
                pipe.lrem(ServiceQueue(lane, connection=self.connection).key, 0, self.id)
                for registry in REGISTRIES.values():
                    pipe.zrem(registry(lane, connection=self.connection, job_class=ServiceJob).key, self.id)
            pipe.delete(self.key, self.dependents_key, self.dependencies_key, Result.get_key(self.id))
            pipe.execute()
        return None


class DashboardQueue(ServiceQueue):
    """A lane read for display: its jobs are DashboardJobs, and `all()` is always the three lanes."""

    def __init__(self, name: str = "default", connection: Redis | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("job_class", DashboardJob)
        super().__init__(name, connection=connection, **kwargs)

    @classmethod
    def all(cls, connection: Redis, **_: Any) -> list[DashboardQueue]:  # type: ignore[override]
        # RQ lists the queues that ever held a job; a lane exists before its first one.
        return [cls(lane, connection=connection) for lane in LANES]

    def empty(self) -> int:
        """RQ's empty(); a batch's jobs deleted with the lane are canceled for their batch first."""
        job_ids = [i.decode() for i in self.connection.lrange(self.key, 0, -1)]
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self.job_class.key_for(job_id), BATCH_FIELD)
            found = pipe.execute()
        with self.connection.pipeline() as pipe:
            for job_id, batch in zip(job_ids, found, strict=True):
                batch_id = batch.decode("utf-8", "replace") if batch else None
                batches.end(pipe, job_id, batch_id if is_job_id(batch_id) else None, "canceled")
            pipe.execute()
        return super().empty()

    def compact(self) -> None:
        # RQ renames the whole lane aside and pushes live ids back one by one:
        # an error on an empty lane, and workers see an empty lane meanwhile.
        # Here only the ids whose job hash is gone are removed, in place.
        job_ids = self.connection.lrange(self.key, 0, -1)
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(self.job_class.key_for(job_id.decode()))
            alive = pipe.execute()
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id, exists in zip(job_ids, alive, strict=True):
                if not exists:
                    pipe.lrem(self.key, 0, job_id)
            pipe.execute()

    def __lt__(self, other: Any) -> bool:
        # Priority order (high, default, low) rather than RQ's alphabetical one.
        return _rank(self.name) < _rank(other.name)


def _rank(name: str) -> tuple[int, str]:
    return (LANES.index(name) if name in LANES else len(LANES), name)


class DashboardWorker(WorkerRecord):
    """A registered worker read for display: JSON jobs, the web client's timeouts kept, unreadable hashes shown."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.update(serializer=JSONSerializer, job_class=DashboardJob, queue_class=DashboardQueue)
        super().__init__(*args, **kwargs)

    def refresh(self) -> None:
        try:
            super().refresh()
        except RedisError:
            raise
        except Exception:
            self._state = "unreadable"

    def get_current_job(self) -> DashboardJob | None:
        return readable(self._running_job, None)

    def _running_job(self) -> DashboardJob | None:
        job = super().get_current_job()
        if job is None:  # no execution records yet (a job younger than a beat): the claimed job it runs
            job_id = self.running_job_id()
            if job_id is not None and is_job_id(job_id):
                job = DashboardJob.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
        return job  # type: ignore[return-value]


def job_row(job: DashboardJob) -> dict[str, Any]:
    """One row of rq-dashboard's job lists (its serialize_job, reading defensively)."""
    latest = readable(job.latest_result, None)
    return {
        "id": job.id,
        "created_at": serialize_date(job.created_at),
        "started_at": serialize_date(job.started_at),
        "ended_at": serialize_date(job.ended_at),
        "exc_info": latest.exc_string if latest else None,
        "description": readable(lambda: format_job_description(job), UNREADABLE),
    }


def current_job(job: DashboardJob | None) -> dict[str, Any] | str:
    """A worker's current job as rq-dashboard's workers list shows it (its serialize_current_job)."""
    if job is None:
        return "idle"
    return {
        "job_id": job.id,
        "description": readable(lambda: format_job_description(job), UNREADABLE),
        "created_at": serialize_date(job.created_at),
        "call_string": readable(job.get_call_string, UNREADABLE),
    }


def job_detail(job: DashboardJob) -> dict[str, Any]:
    """Everything rq-dashboard's job page shows about `job` (its job_info, reading defensively)."""
    latest = readable(job.latest_result, UNREADABLE)
    succeeded = isinstance(latest, Result) and latest.type == Result.Type.SUCCESSFUL
    detail = {
        "id": job.id,
        "created_at": serialize_date(job.created_at),
        "enqueued_at": serialize_date(job.enqueued_at),
        "started_at": serialize_date(job.started_at),
        "ended_at": serialize_date(job.ended_at),
        "origin": job.origin,
        "status": "unreadable" if job.unreadable else status_of(job),
        "result": latest.return_value if succeeded else None,  # type: ignore[union-attr]
        "progress": job.progress,
        "exc_info": latest.exc_string if isinstance(latest, Result) else latest,
        "description": readable(lambda: format_job_description(job), UNREADABLE),
        "metadata": readable(lambda: json.dumps(job.meta), UNREADABLE),
    }
    depends_on = sorted(readable(lambda: job.dependency_ids, []))
    if depends_on:
        with job.connection.pipeline(transaction=False) as pipe:
            for dependency in depends_on:
                pipe.exists(job.key_for(dependency))
            found = pipe.execute()
        detail["depends_on"] = depends_on
        detail["depends_on_status"] = ["active" if exists else "expired" for exists in found]
    return detail
