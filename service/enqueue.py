"""Enqueue: turn validated job requests into RQ jobs, all-or-nothing, in as few round trips as possible.

Every check that can refuse a request (task, lane, arguments, parents) runs
before anything is written. Idempotency keys and unique tasks are claimed in
the same WATCH/MULTI transaction that writes the jobs, so concurrent requests
can never both create a job.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from redis import Redis
from redis.client import Pipeline
from rq.job import Job, JobStatus, Retry

from service import metrics
from service.errors import Conflict, InvalidField
from service.lanes import check_lane, lane_for
from service.queues import ServiceJob, ServiceQueue, get_queue
from service.schemas import JobRequest
from service.task_registry import REGISTRY, TaskSpec

IDEMPOTENCY_PREFIX = "svc:idem:"
UNIQUE_PREFIX = "svc:unique:"
# A claim outlives any job it can point to; a claim on a vanished job is free again.
CLAIM_TTL_SECONDS = 30 * 24 * 3600
ALIVE = frozenset({"queued", "scheduled", "deferred", "started"})
EXPONENTIAL_BASE_SECONDS = 10
EXPONENTIAL_CAP_SECONDS = 3600


@dataclass
class Planned:
    """A job built in memory, not yet written, with what it needs to be written."""

    job: ServiceJob
    queue: ServiceQueue
    run_at: datetime | None
    claim_key: str | None = None
    claim_any_status: bool = False
    fingerprint: str = ""


def enqueue(connection: Redis, request: JobRequest) -> tuple[ServiceJob, bool]:
    """Enqueue one job; return it and whether it was created (False: an existing job was returned)."""
    return commit(connection, [plan(connection, request)])[0]


def enqueue_many(connection: Redis, requests: list[JobRequest]) -> list[ServiceJob]:
    """Enqueue every request or none (a bad one raises before anything is written)."""
    queues: dict[str, ServiceQueue] = {}  # one Queue object per lane for the whole batch
    planned = [plan(connection, request, field=f"jobs.{i}", queues=queues) for i, request in enumerate(requests)]
    return [job for job, _ in commit(connection, planned)]


def plan(
    connection: Redis, request: JobRequest, field: str = "", queues: dict[str, ServiceQueue] | None = None
) -> Planned:
    """Check `request` against the registry and build its job; raise InvalidField on any problem."""
    prefix = f"{field}." if field else ""
    try:
        spec = REGISTRY.get(request.task)
        lane = check_lane(request.queue) if request.queue is not None else lane_for(spec.name, spec.queue)
    except InvalidField as exc:
        raise type(exc)(request.task if exc.field == "task" else request.queue, prefix + exc.field) from None
    check_arguments(spec, request.args, request.kwargs, prefix)
    queues = {} if queues is None else queues
    queue = queues.get(lane) or queues.setdefault(lane, get_queue(lane, connection))
    meta: dict[str, Any] = {}
    if request.ttl is not None:
        meta["expires_at"] = time.time() + request.ttl + (request.delay or 0)
    job = queue.create_job(
        spec.name,
        args=list(request.args),
        kwargs=dict(request.kwargs),
        timeout=request.timeout or spec.timeout_seconds,
        result_ttl=spec.result_ttl_seconds if request.result_ttl is None else request.result_ttl,
        failure_ttl=spec.failure_ttl_seconds,
        description=spec.name,
        depends_on=list(request.depends_on) if request.depends_on else None,
        meta=meta,
        retry=retry_for(request, spec),
    )
    assert isinstance(job, ServiceJob)
    planned = Planned(job=job, queue=queue, run_at=run_at(request))
    if request.depends_on and planned.run_at is not None:
        raise InvalidField(prefix + "depends_on", "cannot be combined with delay or at")
    if request.idempotency_key:
        planned.claim_key = IDEMPOTENCY_PREFIX + request.idempotency_key
        planned.claim_any_status = True
        planned.fingerprint = fingerprint(request.model_dump(mode="json", exclude={"idempotency_key"}))
        job.meta["request_fingerprint"] = planned.fingerprint
    elif spec.unique:
        planned.claim_key = UNIQUE_PREFIX + spec.name + ":" + fingerprint([request.args, request.kwargs])
    return planned


def check_arguments(spec: TaskSpec, args: list[Any], kwargs: dict[str, Any], prefix: str = "") -> None:
    """Raise InvalidField when the arguments do not fit the task's signature."""
    try:
        signature(spec.func).bind(*args, **kwargs)
    except TypeError as exc:
        raise InvalidField(prefix + ("kwargs" if "keyword" in str(exc) else "args"), str(exc)) from None


@lru_cache(maxsize=1024)
def signature(func: Any) -> inspect.Signature:
    return inspect.signature(func)


def retry_for(request: JobRequest, spec: TaskSpec) -> Retry | None:
    """Return RQ's Retry for the request's policy, or the task's default one."""
    if request.retry is not None:
        max_retries, backoff = request.retry.max, request.retry.backoff
    else:
        max_retries, backoff = spec.retry.max, spec.retry.backoff
    if max_retries == 0:
        return None
    if backoff == "exponential":
        intervals = [
            round(min(EXPONENTIAL_BASE_SECONDS * 2**i, EXPONENTIAL_CAP_SECONDS) * random.uniform(0.75, 1.25))
            for i in range(max_retries)
        ]
    else:
        intervals = list(backoff)
    return Retry(max=max_retries, interval=intervals)


def run_at(request: JobRequest) -> datetime | None:
    """Return when a delayed job may start, rounded up to RQ's whole seconds (never early)."""
    if request.delay:
        moment = datetime.now(UTC) + timedelta(seconds=request.delay)
    elif request.at is not None:
        moment = request.at.astimezone(UTC)
        if moment <= datetime.now(UTC):
            return None  # a time already past means now
    else:
        return None
    if moment - datetime.now(UTC) > timedelta(days=366):
        raise InvalidField("at" if request.at else "delay", "must be within 366 days")
    return datetime.fromtimestamp(math.ceil(moment.timestamp()), UTC)


def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def commit(connection: Redis, planned: list[Planned]) -> list[tuple[ServiceJob, bool]]:
    """Write the planned jobs in one transaction; return each job and whether it is new."""
    claims = [p.claim_key for p in planned if p.claim_key]
    parents = sorted({d for p in planned for d in p.job._dependency_ids})
    if not claims and not parents:
        with connection.pipeline() as pipe:
            pipe.multi()
            for p in planned:
                write(p, pipe, deferred=False, shared=False)
            write_shared(planned, pipe)
            pipe.execute()
        return [(p.job, True) for p in planned]
    # WATCH the claims and the parents: if another client takes a claim or a
    # parent finishes before EXEC, the transaction runs again on fresh reads.
    watched = claims + [Job.key_for(d) for d in parents]
    return connection.transaction(
        lambda pipe: _claim_and_write(connection, pipe, planned, parents), *watched, value_from_callable=True
    )


def _claim_and_write(
    connection: Redis, pipe: Pipeline, planned: list[Planned], parents: list[str]
) -> list[tuple[ServiceJob, bool]]:
    """Inside WATCH: read claims and parents, then MULTI and write what is new."""
    existing = existing_claims(connection, pipe, planned)
    unfinished = unfinished_parents(pipe, parents)
    outcome: list[tuple[ServiceJob, bool]] = []
    pipe.multi()
    seen: dict[str, ServiceJob] = {}
    written: list[Planned] = []
    for p in planned:
        holder = existing.get(p.claim_key or "") or seen.get(p.claim_key or "")
        if holder is not None:
            if p.fingerprint and holder.meta.get("request_fingerprint") not in (None, p.fingerprint):
                key = (p.claim_key or "").removeprefix(IDEMPOTENCY_PREFIX)
                raise Conflict(f"idempotency key {key!r} was already used for a different request")
            outcome.append((holder, False))
            continue
        if p.claim_key:
            pipe.set(p.claim_key, p.job.id, ex=CLAIM_TTL_SECONDS)
            seen[p.claim_key] = p.job
        write(p, pipe, deferred=bool(unfinished & set(p.job._dependency_ids)), shared=False)
        written.append(p)
        outcome.append((p.job, True))
    write_shared(written, pipe)
    return outcome


def existing_claims(connection: Redis, pipe: Pipeline, planned: list[Planned]) -> dict[str, ServiceJob]:
    """Return the jobs that still hold the planned claims (read while WATCHing the claim keys)."""
    keys = [p.claim_key for p in planned if p.claim_key]
    if not keys:
        return {}
    any_status = {p.claim_key for p in planned if p.claim_any_status}
    holders = {k: i.decode() for k, i in zip(keys, pipe.mget(keys), strict=True) if i}
    jobs = ServiceJob.fetch_many(list(holders.values()), connection=connection) if holders else []
    found: dict[str, ServiceJob] = {}
    for key, job in zip(holders, jobs, strict=True):
        if job is not None and (key in any_status or job.get_status(refresh=False) in ALIVE):
            found[key] = job
    return found


def unfinished_parents(pipe: Pipeline, parents: list[str]) -> set[str]:
    """Return the parents that have not finished; InvalidField when one does not exist."""
    unfinished = set()
    for parent in parents:
        status = pipe.hget(Job.key_for(parent), "status")
        if status is None:
            raise InvalidField("depends_on", f"no job with id {parent!r}")
        if status != b"finished":
            unfinished.add(parent)
    return unfinished


def write(p: Planned, pipe: Pipeline, *, deferred: bool, shared: bool = True) -> None:
    """Queue the commands that store `p`: deferred behind its parents, scheduled, or in its lane.

    With `shared=False` the writes a batch shares (the enqueue counters, the
    set of queues) are left to one write_shared() call for the whole batch.
    """
    if shared:
        write_shared([p], pipe)
    if deferred:
        p.job.origin = p.queue.name
        p.job.set_status(JobStatus.DEFERRED, pipeline=pipe)
        p.job.register_dependency(pipeline=pipe)
        p.job.save(pipeline=pipe)
    elif p.run_at is not None:
        p.queue.schedule_job(p.job, p.run_at, pipeline=pipe)
    else:
        p.queue._enqueue_job(p.job, pipeline=pipe)


def write_shared(written: list[Planned], pipe: Pipeline) -> None:
    """Count the jobs written and register their queues: one command per (task, lane) and per queue, not per job."""
    counts: dict[tuple[str, str], int] = {}
    queues: dict[str, ServiceQueue] = {}
    for p in written:
        key = (p.job.func_name, p.queue.name)
        counts[key] = counts.get(key, 0) + 1
        if p.run_at is None:  # in its lane or deferred: RQ lists the queue (a scheduled job's queue is listed later)
            queues.setdefault(p.queue.key, p.queue)
    for (task, lane), amount in counts.items():
        metrics.count(pipe, "jobs_enqueued", task, lane, amount=amount)
    if queues:
        pipe.sadd(ServiceQueue.redis_queues_keys, *queues)
