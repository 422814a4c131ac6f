"""Enqueue: turn validated job requests into RQ jobs, all-or-nothing, in one Lua call per request or batch.

Every check that can refuse a request (task, lane, arguments, parents, and
for a client's request the configured Limits) runs before anything is
written; service.jobs.writer then writes every new job in one script call,
which also refuses the whole call when a lane is full. Idempotency keys and
unique tasks are read while WATCHing them and the script runs inside MULTI,
so concurrent requests can never both create a job.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from redis import Redis
from redis.client import Pipeline
from rq.serializers import JSONSerializer

from service.core import clock
from service.core.config import Limits
from service.core.errors import InternalTask, InvalidField
from service.core.keys import IDEMPOTENCY_PREFIX, UNIQUE_PREFIX, job_key
from service.core.lanes import check_group, check_lane, lane_for
from service.jobs import batches
from service.jobs.damage import BATCH_FIELD, GROUP_FIELD
from service.jobs.model import ServiceJob, new_job_ids
from service.jobs.template import JobOptions
from service.jobs.writer import Planned, Submitted, check_written, job_data, write
from service.tasks.registry import REGISTRY, RetryPolicy, TaskSpec

if TYPE_CHECKING:  # requests are validated by the caller: workers enqueue without loading pydantic
    from service.jobs.schemas import JobRequest

ALIVE = frozenset({"queued", "scheduled", "deferred", "started"})
NO_RETRY = RetryPolicy(0, ())
# Calls with at most this many positional and keyword arguments have their fit checked once per shape.
SMALL_CALL_ARGS = 8


@dataclass(frozen=True)
class InternalRequest:
    """A job the service enqueues for itself (hook deliveries): valid by construction, so no schema is loaded."""

    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    delay: float | None = None
    at: datetime | None = None
    timeout: int | None = None
    ttl: int | None = None
    result_ttl: int | None = None
    retry: Any = None
    idempotency_key: None = None
    depends_on: list[str] | None = None
    group: str | None = None


if TYPE_CHECKING:
    Request = JobRequest | InternalRequest


def enqueue(connection: Redis, request: Request, limits: Limits | None = None) -> ServiceJob:
    """Enqueue one job and return it (the existing one for a repeated idempotency key or a unique task)."""
    return submit(connection, [request], limits=limits)[0].job(connection)


def enqueue_many(connection: Redis, requests: list[Request]) -> list[ServiceJob]:
    """Enqueue every request or none (a bad one raises before anything is written)."""
    return [outcome.job(connection) for outcome in submit(connection, requests, batch=True)]


def submit(
    connection: Redis, requests: list[Request], batch: bool = False, limits: Limits | None = None
) -> list[Submitted]:
    """Check every request, then write them all in one transaction; return each one's outcome in order.

    `limits`: a client's request (API, CLI) is held to them; the service's own enqueues pass None.
    """
    return commit(connection, plan_many(requests, batch, limits), limits.queue_length if limits else None)


def submit_batch(
    connection: Redis, requests: list[Request], on_complete: Request, limits: Limits | None = None
) -> tuple[list[Submitted], str]:
    """As submit(batch=True), and open a batch whose `on_complete` job is enqueued once every job has ended.

    The jobs written get the batch's id; a job returned for a repeated idempotency key or a unique
    task was not written by this batch and stays out of it. Returns the outcomes and the batch id.
    """
    planned = plan_many(requests, batch=True, limits=limits)
    opened = batches.prepare(plan_callback(on_complete, limits))
    for p in planned:
        p.extra[BATCH_FIELD] = opened.id
    return commit(connection, planned, limits.queue_length if limits else None, opened), opened.id


def plan_callback(request: Request, limits: Limits | None) -> Planned:
    """Check a batch's on_complete request: a public task that takes the `batch` keyword; plan it."""
    field = "on_complete"
    if "batch" in request.kwargs:
        raise InvalidField(field + ".kwargs", "'batch' is the batch's tally, set when the callback is enqueued")
    if request.task in REGISTRY and REGISTRY.get(request.task).internal:
        raise InternalTask(request.task, field + ".task")
    probe = InternalRequest(request.task, list(request.args), {**request.kwargs, "batch": {}}, request.queue)
    p = plan(probe, field=field, limits=limits)  # the signature must take `batch`
    p.kwargs = dict(request.kwargs)
    return p


def plan_many(requests: list[Request], batch: bool = False, limits: Limits | None = None) -> list[Planned]:
    """Check and plan every request's job (no Redis); InvalidField names the first bad one (`jobs.<i>.` in a batch)."""
    ids = new_job_ids(len(requests))
    return [
        plan(request, field=f"jobs.{i}" if batch else "", limits=limits, job_id=job_id)
        for i, (request, job_id) in enumerate(zip(requests, ids, strict=True))
    ]


def plan(request: Request, field: str = "", limits: Limits | None = None, job_id: str | None = None) -> Planned:
    """Check `request` against the registry and build its job's per-job parts; raise InvalidField on any problem."""
    prefix = f"{field}." if field else ""
    try:
        # Internal tasks (hooks.*) are the service's own: a client's request cannot name them.
        spec = REGISTRY.get(request.task) if isinstance(request, InternalRequest) else REGISTRY.public(request.task)
        lane = check_lane(request.queue) if request.queue is not None else lane_for(spec.name, spec.queue)
    except InvalidField as exc:
        raise type(exc)(request.task if exc.field == "task" else request.queue, prefix + exc.field) from None
    check_arguments(spec, request.args, request.kwargs, prefix)
    if limits is not None:
        check_limits(request, spec, limits, prefix)
    args, kwargs = list(request.args), dict(request.kwargs)
    retry = retry_policy(request, spec)
    timeout = request.timeout or spec.timeout_seconds
    result_ttl = spec.result_ttl_seconds if request.result_ttl is None else request.result_ttl
    p = Planned(
        id=job_id or new_job_ids(1)[0],
        spec=spec,
        lane=lane,
        args=args,
        kwargs=kwargs,
        options=JobOptions(spec.name, lane, timeout, result_ttl, spec.failure_ttl_seconds, spec.name, retry),
        data=job_data(spec.name, args, kwargs),
        run_at=run_at(request, prefix),
    )
    if retry.jittered:
        p.extra["retry_intervals"] = json.dumps(retry.intervals())
    add_links(p, request, prefix)
    meta: dict[str, Any] = {}
    if request.ttl is not None:
        meta["expires_at"] = clock.now() + request.ttl + (request.delay or 0)
    if request.idempotency_key:
        p.claim_key = IDEMPOTENCY_PREFIX + request.idempotency_key
        p.claim_any_status = True
        p.fingerprint = fingerprint(request.model_dump(mode="json", exclude={"idempotency_key"}))
        meta["request_fingerprint"] = p.fingerprint
    elif spec.unique:
        p.claim_key = UNIQUE_PREFIX + spec.name + ":" + fingerprint([request.args, request.kwargs])
    if meta:
        p.extra["meta"] = JSONSerializer.dumps(meta).decode()
    return p


def add_links(p: Planned, request: Request, prefix: str = "") -> None:
    """The job's parents (depends_on) and its fair-share group, as per-job fields."""
    if request.depends_on:
        if p.run_at is not None:
            raise InvalidField(prefix + "depends_on", "cannot be combined with delay or at")
        p.parents = tuple(dict.fromkeys(request.depends_on))
        p.extra["dependency_id"] = p.parents[0]
        p.extra["dependency_ids"] = json.dumps(list(p.parents))
    if request.group is not None:
        p.group = check_group(request.group, prefix + "group")
        p.extra[GROUP_FIELD] = p.group


def check_arguments(spec: TaskSpec, args: list[Any], kwargs: dict[str, Any], prefix: str = "") -> None:
    """Raise InvalidField when the arguments do not fit the task's signature."""
    names = tuple(kwargs)
    if len(args) <= SMALL_CALL_ARGS and len(names) <= SMALL_CALL_ARGS:
        problem = call_problem(spec.func, len(args), names)  # the usual shapes, remembered
    else:
        problem = call_problem.__wrapped__(spec.func, len(args), names)
    if problem is not None:
        raise InvalidField(prefix + problem[0], problem[1])


# A request's option, the limit that caps it, and that limit's variable.
CAPPED_OPTIONS = (
    ("timeout", "timeout_seconds", "MAX_JOB_TIMEOUT_SECONDS"),
    ("result_ttl", "result_ttl_seconds", "MAX_RESULT_TTL_SECONDS"),
    ("ttl", "ttl_seconds", "MAX_JOB_TTL_SECONDS"),
)


def check_limits(request: Request, spec: TaskSpec, limits: Limits, prefix: str = "") -> None:
    """Raise InvalidField when a client's option passes its configured maximum or the task refuses the arguments."""
    for option, attribute, variable in CAPPED_OPTIONS:
        value, cap = getattr(request, option), getattr(limits, attribute)
        if value is not None and value > cap:
            raise InvalidField(prefix + option, f"must be at most {cap} seconds ({variable})")
    spec.check_request(request.args, request.kwargs, limits, prefix)


@lru_cache(maxsize=4096)
def call_problem(func: Any, positional: int, names: tuple[str, ...]) -> tuple[str, str] | None:
    """Return (field, message) when `positional` arguments and keyword `names` do not fit `func`, else None.

    Binding looks only at how many arguments there are and at the keywords'
    names, never at values, so the answer holds for every call of that shape.
    """
    try:
        signature(func).bind(*range(positional), **dict.fromkeys(names))
    except TypeError as exc:
        return ("kwargs" if "keyword" in str(exc) else "args"), str(exc)
    return None


@lru_cache(maxsize=1024)
def signature(func: Any) -> inspect.Signature:
    return inspect.signature(func)


def retry_policy(request: Request, spec: TaskSpec) -> RetryPolicy:
    """Return the request's retry policy, or the task's default one (one value for "no retry")."""
    if request.retry is not None:
        max_retries, backoff = request.retry.max, request.retry.backoff
    else:
        max_retries, backoff = spec.retry.max, spec.retry.backoff
    if max_retries == 0:
        return NO_RETRY
    return RetryPolicy(max_retries, backoff if isinstance(backoff, str) else tuple(backoff))


def run_at(request: Request, prefix: str = "") -> datetime | None:
    """Return when a delayed job may start, rounded up to RQ's whole seconds (never early)."""
    if not request.delay and request.at is None:
        return None
    now = clock.utcnow()
    if request.delay:
        moment = now + timedelta(seconds=request.delay)
    else:
        moment = request.at.astimezone(UTC)
        if moment <= now:
            return None  # a time already past means now
    if moment - now > timedelta(days=366):
        raise InvalidField(prefix + ("at" if request.at else "delay"), "must be within 366 days")
    return datetime.fromtimestamp(math.ceil(moment.timestamp()), UTC)


def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def commit(
    connection: Redis, planned: list[Planned], max_queued: int | None = None, batch: batches.Batch | None = None
) -> list[Submitted]:
    """Write the planned jobs (and open their batch) in one transaction; return each one's outcome
    (QueueFull: nothing written)."""
    claims = [p.claim_key for p in planned if p.claim_key]
    parents = sorted({d for p in planned for d in p.parents})
    if not claims and not parents and batch is None:
        return write(connection, planned, {}, set(), max_queued)
    if not claims and not parents:
        with connection.pipeline() as pipe:  # MULTI: the jobs and their batch, all or nothing
            outcomes = write(pipe, planned, {}, set(), max_queued)
            batches.open_batch(pipe, batch, [o.planned.id for o in outcomes if o.created and o.planned])
            check_written(pipe.execute()[0])
        return outcomes
    # WATCH the claims and the parents: if another client takes a claim or a
    # parent finishes before EXEC, the transaction runs again on fresh reads.
    watched = claims + [job_key(d) for d in parents]
    outcomes: list[Submitted] = []

    def claim_and_write(pipe: Pipeline) -> None:
        outcomes[:] = _claim_and_write(connection, pipe, planned, parents, max_queued)
        if batch is not None:
            batches.open_batch(pipe, batch, [o.planned.id for o in outcomes if o.created and o.planned])

    for reply in connection.transaction(claim_and_write, *watched):
        check_written(reply)
    return outcomes


def _claim_and_write(
    connection: Redis, pipe: Pipeline, planned: list[Planned], parents: list[str], max_queued: int | None
) -> list[Submitted]:
    """Inside WATCH: read claims and parents, then MULTI and write what is new."""
    existing = existing_claims(connection, pipe, planned)
    unfinished = unfinished_parents(pipe, parents)
    pipe.multi()
    return write(pipe, planned, existing, unfinished, max_queued)


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
        status = pipe.hget(job_key(parent), "status")
        if status is None:
            raise InvalidField("depends_on", f"no job with id {parent!r}")
        if status != b"finished":
            unfinished.add(parent)
    return unfinished
