"""Job writer: planned jobs become RQ job hashes, lane pushes and registries in one Lua call.

The job hashes are RQ's own `Job.to_dict()` layout (JSON serializer): RQ
builds one template per task and options, each job adds its id, payload and
per-job fields, and one script writes them all with the lane pushes (and
doorbells), registries, claims and counters. service.jobs.enqueue checks and plans
the requests and decides, inside its transaction, what is new; this module
only writes.
"""

from __future__ import annotations

import calendar
import json
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.commands.core import Script
from rq.job import JobStatus, Retry
from rq.registry import DeferredJobRegistry, ScheduledJobRegistry
from rq.utils import utcformat

from service.core import metrics
from service.core.errors import Conflict, QueueFull
from service.jobs.describe import describe, isotime
from service.jobs.model import ServiceJob, ServiceQueue
from service.tasks.registry import TaskSpec

IDEMPOTENCY_PREFIX = "svc:idem:"
# A claim outlives any job it can point to; a claim on a vanished job is free again.
CLAIM_TTL_SECONDS = 30 * 24 * 3600
# A valid RQ job id that stands for each job's own id in templates and key shapes.
PLACEHOLDER = "0job0id0placeholder0"
# Fields that differ per job; everything else comes from the template.
PER_JOB_FIELDS = frozenset({"created_at", "enqueued_at", "data", "meta", "retry_intervals"})
# zlib.compress() sets up a 32 KB window and a 128 KB hash table for every
# payload (~60 us each); a payload that fits a 4 KB window compresses the
# same with a small one, and zlib.decompress (RQ) reads either.
SMALL_PAYLOAD_BYTES = 3800

# ARGV[1]: JSON header: batch time, templates, claims, counters, queues, key
# shapes, and per job [id, template index, score, data size, [extra field,
# value, ...], [parent, ...]]; with max_queued, per lane receiving jobs [its
# list, scheduled and deferred keys, jobs added, lane]. ARGV[2]: every job's
# data, one after another. Returns 1, or {'queue_full', lane, waiting} having
# written nothing when a lane would hold more than max_queued waiting jobs.
# A template's commands are RQ's own for its status: the lane push and doorbell
# (ServiceQueue.push_job_id) for queued; the scheduled registry for scheduled;
# the deferred registry and dependency sets (Job.register_dependency) for deferred.
# The script is atomic, so the order of the writes within it is invisible.
WRITE_SCRIPT = """
local h = cjson.decode(ARGV[1])
local blobs = ARGV[2]
local now, templates, placeholder = h.now, h.templates, h.placeholder
if h.max_queued then
    for _, lane in ipairs(h.lanes) do
        local waiting = redis.call('LLEN', lane[1]) + redis.call('ZCARD', lane[2]) + redis.call('ZCARD', lane[3])
        if waiting + lane[4] > h.max_queued then
            return {'queue_full', lane[5], waiting}
        end
    end
end
for _, claim in ipairs(h.claims) do
    redis.call('SET', claim[1], claim[2], 'EX', h.claim_ttl)
end
-- One field list per template, reused: each job's values overwrite its last slots.
for _, t in ipairs(templates) do
    local fields = t.fields
    fields[#fields + 1], fields[#fields + 2] = 'created_at', now
    if t.status == 'queued' then
        fields[#fields + 1], fields[#fields + 2] = 'enqueued_at', now
    end
    fields[#fields + 1] = 'data'
    t.data_slot = #fields + 1
end
-- Pushes to one list are collected and sent as one command: RPUSH k a b is RPUSH k a; RPUSH k b.
local pushes, push_order = {}, {}
local offset = 1
for _, job in ipairs(h.jobs) do
    local id, t, score, size, extra, parents = job[1], templates[job[2]], job[3], job[4], job[5], job[6]
    local fields, slot = t.fields, t.data_slot
    fields[slot] = string.sub(blobs, offset, offset + size - 1)
    offset = offset + size
    for j = 1, #extra do
        fields[slot + j] = extra[j]
    end
    redis.call('HSET', h.job_prefix .. id, unpack(fields, 1, slot + #extra))
    if t.status == 'queued' then
        for _, command in ipairs(t.push) do
            local list = command[1] .. ' ' .. command[2]
            local values = pushes[list]
            if not values then
                values = {command[1], command[2]}
                pushes[list] = values
                push_order[#push_order + 1] = list
            end
            values[#values + 1] = (command[3] == placeholder) and id or command[3]
        end
    elseif t.status == 'scheduled' then
        redis.call('ZADD', t.registry, score, id)
    else
        redis.call('ZADD', t.registry, h.deferred_score, id)
        for _, parent in ipairs(parents) do
            redis.call('SADD', h.dependents[1] .. parent .. h.dependents[2], id)
            redis.call('SADD', h.dependencies[1] .. id .. h.dependencies[2], parent)
        end
    end
end
for _, list in ipairs(push_order) do
    redis.call(unpack(pushes[list]))
end
for _, c in ipairs(h.counts) do
    redis.call('HINCRBY', h.metrics, c[1], c[2])
end
if #h.queues > 0 then
    redis.call('SADD', h.queues_key, unpack(h.queues))
end
return 1
"""


@dataclass
class Planned:
    """A checked job request, not yet written: its id, payload and what its hash and claim need."""

    id: str
    spec: TaskSpec
    lane: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: tuple[Any, ...]  # the template key, without the status
    data: bytes
    extra: dict[str, str] = field(default_factory=dict)
    parents: tuple[str, ...] = ()
    run_at: datetime | None = None
    claim_key: str | None = None
    claim_any_status: bool = False
    fingerprint: str = ""


@dataclass
class Submitted:
    """One request's outcome: the job written for it, or the existing job that holds its claim."""

    planned: Planned | None
    created: bool
    status: str = "queued"
    at: datetime | None = None
    holder: ServiceJob | None = None
    now_rq: str = ""

    def describe(self) -> dict[str, Any]:
        """Return the job's JSON form, exactly as GET /jobs/<id> would read it now."""
        if self.holder is not None:
            return describe(self.holder)
        p = self.planned
        assert p is not None and self.at is not None
        return {
            "id": p.id,
            "task": p.spec.name,
            "queue": p.lane,
            "status": self.status,
            "args": p.args,
            "kwargs": p.kwargs,
            "result": None,
            "error": None,
            "attempts": 0,
            "enqueued_at": batch_isotime(self.at) if self.status == "queued" else None,
            "started_at": None,
            "ended_at": None,
        }

    def job(self, connection: Redis) -> ServiceJob:
        """Return the job as a ServiceJob, restored from the fields written (no round trip)."""
        if self.holder is not None:
            return self.holder
        assert self.planned is not None
        job = ServiceJob(self.planned.id, connection=connection)
        fields = _fields(self.planned, self.status, self.now_rq)
        raw = (v if isinstance(v, bytes) else str(v).encode() for v in fields)
        job.restore(dict(zip(raw, raw, strict=False)))  # as HGETALL would return it
        return job


@lru_cache(maxsize=16)
def batch_isotime(moment: datetime) -> str | None:
    """isotime(), worked out once for all the jobs a batch writes at one moment."""
    return isotime(moment)


def compress(payload: bytes) -> bytes:
    """Return `payload` zlib-compressed as RQ stores a job's data (zlib.decompress reads it)."""
    if len(payload) > SMALL_PAYLOAD_BYTES:
        return zlib.compress(payload)
    compressor = zlib.compressobj(6, zlib.DEFLATED, 12, 4)
    return compressor.compress(payload) + compressor.flush()


@lru_cache(maxsize=4096)
def template(options: tuple[Any, ...], status: str) -> tuple[str, ...]:
    """Return the hash fields (name, value, ...) RQ's Job.to_dict() writes for every job with these options.

    RQ itself builds them, from a job created the way Queue.create_job would;
    the per-job fields (PER_JOB_FIELDS) are left out.
    """
    name, failure_ttl, lane, timeout, result_ttl, retry_max, backoff = options
    intervals = [0] if backoff == "exponential" else list(backoff)
    job = ServiceJob.create(
        name,
        args=[],
        kwargs={},
        connection=Redis(),  # never used to connect: only to_dict() is called
        timeout=timeout,
        result_ttl=result_ttl,
        failure_ttl=failure_ttl,
        description=name,
        id=PLACEHOLDER,
        origin=lane,
        status=JobStatus(status),
        retry=Retry(max=retry_max, interval=intervals) if retry_max else None,
    )
    fields: list[str] = []
    for key, value in job.to_dict().items():
        if key in PER_JOB_FIELDS and not (key == "retry_intervals" and backoff != "exponential"):
            continue
        fields += [key, value.value if isinstance(value, JobStatus) else str(value)]
    return tuple(fields)


_LANE_KEYS: dict[str, dict[str, Any]] = {}


def lane_keys(lane: str) -> dict[str, Any]:
    """Return the keys a job in `lane` is written to, as RQ and ServiceQueue name them."""
    keys = _LANE_KEYS.get(lane)
    if keys is None:
        queue = ServiceQueue(lane, connection=Redis())  # never used to connect: only key names are read
        keys = _LANE_KEYS[lane] = {
            "queue": queue.key,
            "push": push_commands(queue),
            "scheduled": ScheduledJobRegistry(queue=queue).key,
            "deferred": DeferredJobRegistry(queue=queue).key,
        }
    return keys


def push_commands(queue: ServiceQueue) -> list[list[str]]:
    """Return ServiceQueue's push commands for PLACEHOLDER, checked to be (list command, key, value)."""
    commands = queue.push_commands(PLACEHOLDER)
    if any(len(c) != 3 or c[0] not in ("RPUSH", "LPUSH") for c in commands):
        raise RuntimeError(f"the write script cannot replay {commands!r}")
    return commands


@lru_cache(maxsize=1)
def dependency_key_shapes() -> dict[str, list[str]]:
    """Return RQ's dependents and dependencies keys split around the job id, for the script to join."""
    job = ServiceJob(PLACEHOLDER, connection=Redis())  # never used to connect: only key names are read
    return {
        "dependents": ServiceJob.dependents_key_for(PLACEHOLDER).split(PLACEHOLDER),
        "dependencies": job.dependencies_key.split(PLACEHOLDER),
    }


def write(
    client: Redis | Pipeline,
    planned: list[Planned],
    existing: dict[str, ServiceJob],
    unfinished: set[str],
    max_queued: int | None = None,
) -> list[Submitted]:
    """Queue (in a MULTI) or run the one script call that writes every new job; return the outcomes.

    With `max_queued`, the script refuses the whole call when a lane would hold more waiting jobs
    (queued, scheduled, deferred): run here, that raises QueueFull; queued in a MULTI, the caller
    passes the script's reply to check_written().
    """
    now = datetime.now(UTC)
    now_rq = utcformat(now.replace(tzinfo=None))
    templates: dict[tuple[Any, ...], int] = {}
    header: dict[str, Any] = {"now": now_rq, "templates": [], "claims": [], "counts": []}
    counts: dict[tuple[str, str], int] = {}
    added: dict[str, int] = {}
    queues: dict[str, None] = {}
    seen: dict[str, Submitted] = {}
    outcome: list[Submitted] = []
    jobs: list[list[Any]] = []
    blobs: list[bytes] = []
    for p in planned:
        holder = existing.get(p.claim_key or "")
        earlier = seen.get(p.claim_key or "")
        if holder is not None or earlier is not None:
            check_fingerprint(p, holder, earlier)
            outcome.append(Submitted(earlier.planned if earlier else None, False, holder=holder, **_same(earlier)))
            continue
        status = "deferred" if unfinished.intersection(p.parents) else "scheduled" if p.run_at else "queued"
        index = templates.get((p.options, status))
        if index is None:
            index = templates[(p.options, status)] = len(templates) + 1
            header["templates"].append(_template_header(p, status))
        score = str(calendar.timegm(p.run_at.utctimetuple())) if p.run_at is not None else ""
        jobs.append([p.id, index, score, len(p.data), _pairs(p.extra), p.parents])
        blobs.append(p.data)
        if p.claim_key:
            header["claims"].append([p.claim_key, p.id])
        counted = (p.spec.name, p.lane)
        counts[counted] = counts.get(counted, 0) + 1
        added[p.lane] = added.get(p.lane, 0) + 1
        queues[lane_keys(p.lane)["queue"]] = None
        written = Submitted(p, True, status=status, at=now, now_rq=now_rq)
        if p.claim_key:
            seen[p.claim_key] = written
        outcome.append(written)
    if jobs:
        header.update(
            jobs=jobs,
            counts=[[metrics.field("jobs_enqueued", *key), amount] for key, amount in counts.items()],
            queues=list(queues),
            queues_key=ServiceQueue.redis_queues_keys,
            metrics=metrics.METRICS_KEY,
            job_prefix=ServiceJob.redis_job_namespace_prefix,
            placeholder=PLACEHOLDER,
            claim_ttl=CLAIM_TTL_SECONDS,
            deferred_score=str(int(now.timestamp())),
            **dependency_key_shapes(),
        )
        if max_queued is not None:
            header["max_queued"] = max_queued
            header["lanes"] = [[*waiting_keys(lane), count, lane] for lane, count in added.items()]
        # Two arguments, not several per job: redis-py packs each argument in Python.
        args = [json.dumps(header, separators=(",", ":")), b"".join(blobs)]
        reply = write_script(client)(args=args, client=client)
        if not isinstance(client, Pipeline):
            check_written(reply)
    return outcome


def waiting_keys(lane: str) -> tuple[str, str, str]:
    """The keys whose jobs count as waiting in `lane`: its list, its scheduled and its deferred registries."""
    keys = lane_keys(lane)
    return keys["queue"], keys["scheduled"], keys["deferred"]


def check_written(reply: Any) -> None:
    """Raise QueueFull when the write script refused the call (a full lane); anything else is success."""
    if isinstance(reply, list) and reply and reply[0] == b"queue_full":
        lane, waiting = reply[1].decode(), int(reply[2])
        raise QueueFull(f"lane {lane!r} holds {waiting} waiting jobs (MAX_QUEUE_LENGTH); try again later")


def _same(earlier: Submitted | None) -> dict[str, Any]:
    """The fields of an earlier outcome in this batch that a repeat of its claim shares."""
    if earlier is None:
        return {}
    return {"status": earlier.status, "at": earlier.at, "now_rq": earlier.now_rq}


def _pairs(extra: dict[str, str]) -> list[str]:
    return [part for item in extra.items() for part in item]


def _template_header(p: Planned, status: str) -> dict[str, Any]:
    keys = lane_keys(p.lane)
    return {
        "fields": list(template(p.options, status)),
        "status": status,
        "push": keys["push"],
        "registry": keys["scheduled"] if status == "scheduled" else keys["deferred"],
    }


def _fields(p: Planned, status: str, now_rq: str) -> tuple[Any, ...]:
    """The hash fields written for `p` (template, then per-job), for restoring a ServiceJob without a read."""
    times = ("created_at", now_rq, "enqueued_at", now_rq) if status == "queued" else ("created_at", now_rq)
    return (*template(p.options, status), *times, "data", p.data, *_pairs(p.extra))


def check_fingerprint(p: Planned, holder: ServiceJob | None, earlier: Submitted | None) -> None:
    """Raise Conflict when an idempotency key is reused for a different request."""
    if not p.fingerprint:
        return
    if holder is not None:
        theirs = (holder.meta or {}).get("request_fingerprint")
    else:
        theirs = earlier.planned.fingerprint if earlier is not None and earlier.planned else None
    if theirs not in (None, "", p.fingerprint):
        key = (p.claim_key or "").removeprefix(IDEMPOTENCY_PREFIX)
        raise Conflict(f"idempotency key {key!r} was already used for a different request")


_SCRIPTS: dict[str, Script] = {}


def write_script(client: Redis | Pipeline) -> Script:
    """Return the write script (one Script object; every call names its client)."""
    script = _SCRIPTS.get("write")
    if script is None:
        script = _SCRIPTS["write"] = Script(client, WRITE_SCRIPT)
    return script
