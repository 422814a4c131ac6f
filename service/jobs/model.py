"""Queues: RQ's Job and Queue as the service uses them (JSON only, registered tasks only).

Every process builds jobs and queues through these classes, so nothing is
ever pickled and no worker resolves a function by import path: a job's
function name is a registered task name, looked up in the task registry.
"""

from __future__ import annotations

import base64
import json
import os
import re
from typing import Any

from redis import Redis
from rq.exceptions import DeserializationError
from rq.job import UNEVALUATED, Job, JobStatus
from rq.queue import Queue
from rq.serializers import JSONSerializer

from service.core import clock, compat
from service.core.keys import doorbell_key, ended_channel
from service.core.lanes import LANES, check_lane
from service.jobs import callbacks, damage
from service.tasks.registry import REGISTRY, TaskSpec

# A job id the service creates or RQ accepts (new_job_ids', RQ's uuid4 as earlier releases made, or
# `<schedule id>-<epoch>`), checked on the whole string.
JOB_ID_MAX_LENGTH = 200
JOB_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{JOB_ID_MAX_LENGTH}}}")
# A new id is 12 random bytes in URL-safe base64: 16 characters (a uuid's 36 cost 48-80 B more Redis memory per
# finished job: docs/redis.md). The first byte's top bit is cleared, so an id starts with A-Z or a-f, never '-' (an
# option on a command line) or '_': 95 random bits, Sidekiq's jid has 96.
JOB_ID_BYTES = 12
FIRST_BIT_CLEAR = bytes(range(128)) * 2

# RQ's serializer resolution and date parsing, sped up process-wide (every
# process that builds jobs imports this module).
compat.patch_rq()


def new_job_ids(count: int) -> list[str]:
    """`count` random job ids, from one read of the OS's randomness (not one per job)."""
    raw = bytearray(os.urandom(JOB_ID_BYTES * count))
    raw[::JOB_ID_BYTES] = raw[::JOB_ID_BYTES].translate(FIRST_BIT_CLEAR)
    text = base64.urlsafe_b64encode(raw).decode()
    size = JOB_ID_BYTES * 4 // 3
    return [text[i : i + size] for i in range(0, size * count, size)]


class CompactJSON(JSONSerializer):
    """RQ's JSON serializer without spaces after separators (every stored result is smaller) and refusing
    NaN and infinities, which no JSON client can read back (a task returning one fails: its result is not JSON)."""

    @staticmethod
    def dumps(*args: Any, **kwargs: Any) -> bytes:
        return json.dumps(*args, separators=(",", ":"), allow_nan=False, **kwargs).encode()


class JobExpired(Exception):
    """Raised in a worker when a job's ttl ran out before it started; the job is not run or retried."""


class JobDamaged(Exception):
    """Raised in a worker for a job whose stored hash is damaged (service.jobs.damage); it fails unrun, unretried."""


# The statuses a job ends in: setting one wakes the job's waiters (service.jobs.waits).
ENDED_STATUSES = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED})
BAD_DATA = "the job's data is not JSON [task name, null, [args], {kwargs}]; it is never loaded or run"


class ServiceJob(Job):
    """An RQ job stored as JSON whose function is looked up in the task registry."""

    def __init__(self, id: str | None = None, connection: Redis | None = None, serializer: Any = None) -> None:
        super().__init__(id, connection=connection, serializer=serializer or JSONSerializer)
        self.attempts = 0
        self.group: str | None = None  # the fair-share group within its lane (service.workers.claim)
        self.batch_id: str | None = None  # the batch it belongs to (service.jobs.batches)
        # Set by the worker when the outcome it stores ends the job (finished, failed, canceled): the
        # store's transaction then counts the end in the job's batch (ServiceWorker.cleanup_execution).
        self.batch_outcome: str | None = None
        self.progress_json: bytes | None = None  # what the task last gave service.progress(), as stored
        # What is wrong with the stored hash (None: nothing): the job fails with it instead of running.
        self.damage: str | None = None

    @property
    def func(self) -> Any:
        if self.damage:
            raise JobDamaged(f"the stored job is damaged ({self.damage[:500]}); not run")
        if self.expired:
            raise JobExpired("not started within its ttl; discarded without running")
        # Defence in depth: whoever wrote this job into Redis, only a
        # registered task can run (UnknownTask fails the job unexecuted).
        return REGISTRY.get(self.func_name).func

    @property
    def spec(self) -> TaskSpec | None:
        """The job's registered task; None when its data names none or cannot be read."""
        try:
            name = self.func_name
        except DeserializationError:
            return None
        return REGISTRY.get(name) if name in REGISTRY else None

    @property
    def task_name(self) -> str:
        """The job's task name for logs, metrics and events ('?' when its data cannot be read)."""
        spec = self.spec
        if spec is not None:
            return spec.name
        try:
            return str(self.func_name)[:100]
        except DeserializationError:
            return "?"

    def _deserialize_data(self) -> None:
        # RQ unpacks any 4-item value; a task call is (name, None, [args], {kwargs}) and nothing else.
        try:
            super()._deserialize_data()
        except DeserializationError:
            raise DeserializationError(BAD_DATA) from None
        name, instance, args, kwargs = self._func_name, self._instance, self._args, self._kwargs
        if not (isinstance(name, str) and instance is None and isinstance(args, list) and isinstance(kwargs, dict)):
            self._func_name = self._instance = self._args = self._kwargs = UNEVALUATED
            raise DeserializationError(BAD_DATA)

    @property
    def expired(self) -> bool:
        expires_at = (self.meta or {}).get("expires_at")
        return expires_at is not None and clock.now() > float(expires_at)

    @property
    def progress(self) -> Any:
        """The task's latest progress (service.progress), None until it reports one (or if not JSON)."""
        try:
            return json.loads(self.progress_json) if self.progress_json else None
        except (ValueError, RecursionError):  # not JSON, or nested past the parser (a record planted in Redis)
            return None

    @property
    def should_retry(self) -> bool:
        # An expired or damaged job stays failed: retrying could only fail again.
        return bool(super().should_retry) and not self.damage and not self.expired

    def set_status(self, status: JobStatus, pipeline: Any = None) -> None:
        """RQ's set_status; a status that ends the job is also published on its ended channel, in the same pipeline."""
        super().set_status(status, pipeline=pipeline)
        if status in ENDED_STATUSES:
            target = pipeline if pipeline is not None else self.connection
            target.publish(ended_channel(self.id), JobStatus(status).value)

    def delete(self, pipeline: Any = None, remove_from_queue: bool = True, delete_dependents: bool = False) -> None:
        """RQ's delete; the job's waiters are woken too (they find it gone), after it or in the same pipeline."""
        super().delete(pipeline=pipeline, remove_from_queue=remove_from_queue, delete_dependents=delete_dependents)
        (pipeline if pipeline is not None else self.connection).publish(ended_channel(self.id), "deleted")

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

    @classmethod
    def fetch_many(cls, job_ids: Any, connection: Redis, serializer: Any = None) -> list[Any]:
        """RQ's fetch_many in one pipeline without MULTI: Redis refuses MULTI while it is full, reads or not."""
        ids = list(job_ids)
        with connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(cls.key_for(job_id))
            found = pipe.execute() if ids else []
        jobs: list[ServiceJob | None] = []
        for job_id, fields in zip(ids, found, strict=True):
            job = cls(job_id, connection=connection, serializer=serializer) if fields else None
            if job is not None:
                job.restore(fields)
            jobs.append(job)
        return jobs

    def restore(self, raw_data: Any) -> Any:
        """Load a stored hash; a field that is not as the service writes it is left out and named in `damage`."""
        fields, problems = damage.inspect(raw_data)
        try:
            result = super().restore(fields)
        except Exception as exc:  # a shape the checks do not know: keep what identifies the job
            problems.append(f"unreadable: {type(exc).__name__}: {exc}"[:300])
            result = super().restore({k: v for k, v in fields.items() if k in ("data", "origin", "status")})
        self.webhooks = []  # RQ would POST to URLs stored in the hash, outside the outbound fence
        self.attempts = int(fields.get("attempts") or 0)
        self.group = fields[damage.GROUP_FIELD].decode() if damage.GROUP_FIELD in fields else None
        self.batch_id = fields[damage.BATCH_FIELD].decode() if damage.BATCH_FIELD in fields else None
        self.progress_json = fields.get("progress")
        self.damage = "; ".join(problems) or None
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
