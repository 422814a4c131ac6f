"""Queues: RQ's Job and Queue as the service uses them (JSON only, registered tasks only).

Every process builds jobs and queues through these classes, so nothing is
ever pickled and no worker resolves a function by import path: a job's
function name is a registered task name, looked up in the task registry.
"""

from __future__ import annotations

import time
from typing import Any

from redis import Redis
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from service.core import compat
from service.core.keys import doorbell_key
from service.core.lanes import LANES, check_lane
from service.jobs import callbacks
from service.tasks.registry import REGISTRY

# RQ's serializer resolution and date parsing, sped up process-wide (every
# process that builds jobs imports this module).
compat.patch_rq()


class JobExpired(Exception):
    """Raised in a worker when a job's ttl ran out before it started; the job is not run or retried."""


class ServiceJob(Job):
    """An RQ job stored as JSON whose function is looked up in the task registry."""

    def __init__(self, id: str | None = None, connection: Redis | None = None, serializer: Any = None) -> None:
        super().__init__(id, connection=connection, serializer=serializer or JSONSerializer)
        self.attempts = 0

    @property
    def func(self) -> Any:
        if self.expired:
            raise JobExpired("not started within its ttl; discarded without running")
        # Defence in depth: whoever wrote this job into Redis, only a
        # registered task can run (UnknownTask fails the job unexecuted).
        return REGISTRY.get(self.func_name).func

    @property
    def expired(self) -> bool:
        expires_at = (self.meta or {}).get("expires_at")
        return expires_at is not None and time.time() > float(expires_at)

    @property
    def should_retry(self) -> bool:
        # An expired job stays discarded: retrying could only expire again.
        return bool(super().should_retry) and not self.expired

    def prepare_for_execution(self, worker_name: str, pipeline: Any) -> None:
        super().prepare_for_execution(worker_name, pipeline)
        # Counted in the same pipeline RQ uses to mark the job started.
        pipeline.hincrby(self.key, "attempts", 1)
        self.attempts += 1

    # RQ imports whatever module path a job hash names as a callback; here the
    # stored name only selects one of the service's own (service.jobs.callbacks).
    @property
    def success_callback(self) -> Any:
        return callbacks.resolve(self._success_callback_name)

    @property
    def failure_callback(self) -> Any:
        return callbacks.resolve(self._failure_callback_name)

    @property
    def stopped_callback(self) -> Any:
        return callbacks.resolve(self._stopped_callback_name)

    def restore(self, raw_data: Any) -> Any:
        result = super().restore(raw_data)
        raw = raw_data.get(b"attempts") or raw_data.get("attempts") or 0
        self.attempts = int(raw)
        return result


class ServiceQueue(Queue):
    """An RQ queue of ServiceJobs."""

    job_class = ServiceJob
    # RQ asks the server its version (INFO) once per Queue object; queues are
    # made per request, so remember the answer per connection pool instead.
    _server_versions: dict[int, tuple[int, int, int]] = {}

    def get_redis_server_version(self) -> tuple[int, int, int]:
        pool = id(self.connection.connection_pool)
        if pool not in self._server_versions:
            self._server_versions[pool] = super().get_redis_server_version()
        self.redis_server_version = self._server_versions[pool]
        return self.redis_server_version

    def __init__(self, name: str = "default", connection: Redis | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", JSONSerializer)
        kwargs.setdefault("job_class", ServiceJob)
        super().__init__(name, connection=connection, **kwargs)

    def push_job_id(self, job_id: str, pipeline: Any = None, at_front: bool = False) -> None:
        # Ring the lane's doorbell in the same pipeline: it wakes one idle
        # worker (service.workers.claim), which then claims the job atomically.
        pipe = pipeline if pipeline is not None else self.connection.pipeline()
        super().push_job_id(job_id, pipeline=pipe, at_front=at_front)
        pipe.rpush(doorbell_key(self.name), 1)
        if pipeline is None:
            pipe.execute()

    def push_commands(self, job_id: str) -> list[list[str]]:
        """Return the Redis commands push_job_id sends for `job_id` (the lane, the doorbell), for a script to replay."""
        recorder = _Recorder()
        self.push_job_id(job_id, pipeline=recorder)
        return recorder.commands


class _Recorder:
    """A stand-in pipeline that records the list commands push_job_id sends."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        if name not in ("rpush", "lpush"):
            raise AttributeError(f"push_job_id used {name!r}, which a recorded push cannot replay")

        def record(*args: Any) -> None:
            self.commands.append([name.upper(), *(str(a) for a in args)])

        return record


def get_queue(name: str, connection: Redis) -> ServiceQueue:
    """Return the lane `name`; raise UnknownQueue for any other name."""
    return ServiceQueue(check_lane(name), connection=connection)


def get_lanes(connection: Redis, names: tuple[str, ...] = LANES) -> list[ServiceQueue]:
    """Return the queues for `names`, in the order given (priority order)."""
    return [get_queue(name, connection) for name in names]
