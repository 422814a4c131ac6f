"""Poison: claimed ids no job can have, and jobs whose failure cannot be stored the normal way.

A worker (or the reaper) never lets one claimed entry stop it: whatever a
lane or a job hash holds, the entry leaves the claimed list for good.

- `discard`: an id the service never gives a job (a newline, NUL, ':', '..',
  10 kB, bytes that are not UTF-8) is removed, with whatever its claim
  started; a hash under that id is marked failed and left to expire. It is
  counted in `jobs_discarded` and logged: no API can name such an id.
- `fail`: a job whose load, run or finish raised where RQ's failure path
  could not record it is marked failed directly (status, failed registry,
  a failure result with the reason), so GET /jobs/<id> shows why.

Both write keys built from the id as raw bytes, so no id can make them raise;
only a Redis outage escapes.
"""

from __future__ import annotations

import logging
from typing import Any

from redis import Redis
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import utcformat

from service.core import clock, keys, metrics
from service.core.lanes import LANES
from service.jobs import batches
from service.jobs.damage import BATCH_FIELD, is_job_id
from service.tasks.registry import DEFAULT_FAILURE_TTL_SECONDS
from service.workers.claim import raw_id

log = logging.getLogger("service.worker")

ENDED = frozenset({b"finished", b"failed", b"stopped", b"canceled"})
LANE_NAMES = frozenset(lane.encode() for lane in LANES)


def discard(
    connection: Redis, claimed_key: str, job_id: str, lane: str | None, execution_id: str | None, worker_name: str
) -> None:
    """Remove a claimed id that no job can have, and what its claim started; count and log it."""
    job_key = raw_id(Job.key_for(job_id))
    is_hash = connection.type(job_key) == b"hash"
    with connection.pipeline() as pipe:
        _forget_claim(connection, pipe, claimed_key, job_id, execution_id, worker_name)
        if is_hash:
            pipe.hset(job_key, "status", JobStatus.FAILED.value)
            pipe.expire(job_key, DEFAULT_FAILURE_TTL_SECONDS)
        metrics.count(pipe, "jobs_discarded", lane or "?")
        pipe.execute()
    log.error("%s: discarded the claimed id %r: not a job id the service gives", worker_name, job_id[:200])


def fail(
    connection: Redis,
    claimed_key: str,
    job_id: str,
    lane: str | None,
    reason: str,
    execution_id: str | None,
    worker_name: str,
) -> None:
    """Mark job `job_id` failed with `reason` (unless it has already ended) and forget its claim.

    Its outcome goes to `lane`, or (None) to the lane its hash names, or the default lane.
    """
    job_key = raw_id(Job.key_for(job_id))
    is_hash = connection.type(job_key) == b"hash"  # another type there is no job: only the claim goes
    status, origin, batch = connection.hmget(job_key, ["status", "origin", BATCH_FIELD]) if is_hash else (None,) * 3
    lane = lane or (origin.decode() if origin in LANE_NAMES else LANES[1])
    with connection.pipeline() as pipe:
        _forget_claim(connection, pipe, claimed_key, job_id, execution_id, worker_name)
        if status is not None and status not in ENDED:
            ttl = DEFAULT_FAILURE_TTL_SECONDS
            pipe.hset(job_key, mapping={"status": JobStatus.FAILED.value, "ended_at": utcformat(clock.utcnow())})
            pipe.publish(raw_id(keys.ended_channel(job_id)), JobStatus.FAILED.value)
            pipe.expire(job_key, ttl)
            pipe.zadd(FailedJobRegistry.key_template.format(lane), {raw_id(job_id): clock.now() + ttl})
            result = Result(job_id, Result.Type.FAILED, connection, exc_string=reason, worker_name=worker_name,
                            serializer=JSONSerializer, execution_id=execution_id)  # fmt: skip
            pipe.xadd(raw_id(Result.get_key(job_id)), result.serialize(), maxlen=10)
            pipe.expire(raw_id(Result.get_key(job_id)), ttl)
            metrics.count(pipe, "jobs_failed", "?", lane)
            if batch and is_job_id(batch.decode("utf-8", "replace")):
                batches.end(pipe, job_id, batch.decode(), "failed")
        pipe.execute()
    log.error("%s: %s: job %r failed alone: %s", worker_name, lane, job_id[:200], reason[:500])


def _forget_claim(
    connection: Redis, pipe: Any, claimed_key: str, job_id: str, execution_id: str | None, worker_name: str
) -> None:
    """Queue the removal of `job_id` from the claimed list and of the execution its claim started.

    With no execution id (an id found in a list later), every started-registry
    entry of the id goes: RQ's registry clean-up cannot load an id that is not one.
    """
    pipe.lrem(claimed_key, 1, raw_id(job_id))
    prefix = raw_id(f"{job_id}:")
    if execution_id is not None:
        execution = Execution(execution_id, job_id, connection, worker_name=worker_name)
        pipe.delete(raw_id(execution.key))
        pipe.zrem(raw_id(ExecutionRegistry.key_template.format(job_id)), execution_id)
        pipe.srem(WORKER_EXECUTIONS_KEY_TEMPLATE.format(worker_name), raw_id(execution.composite_key))
        prefix = raw_id(execution.composite_key)
    for lane in LANES:
        key = StartedJobRegistry.key_template.format(lane)
        stale = [member for member in connection.zrange(key, 0, -1) if member.startswith(prefix)]
        if stale:
            pipe.zrem(key, *stale)
