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
from datetime import datetime
from functools import lru_cache
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from redis import Redis
from redis.client import Pipeline
from rq.utils import utcformat

from service.core import clock, keys, metrics
from service.core.errors import Conflict, QueueFull
from service.core.keys import IDEMPOTENCY_PREFIX, PLACEHOLDER_ID
from service.core.lua import script
from service.jobs.damage import BATCH_FIELD
from service.jobs.describe import describe, isotime
from service.jobs.model import ServiceJob, ServiceQueue
from service.jobs.template import JobOptions, template
from service.tasks.registry import TaskSpec

WRITE = script("write_jobs")
# A claim outlives any job it can point to; a claim on a vanished job is free again.
CLAIM_TTL_SECONDS = 30 * 24 * 3600
# zlib.compress() sets up a 32 KB window and a 128 KB hash table for every
# payload (~60 us each); a payload that fits a 4 KB window compresses the
# same with a small one, and zlib.decompress (RQ) reads either.
SMALL_PAYLOAD_BYTES = 3800
# Below this size zlib makes a payload longer (its header and checksum take 6 bytes; 28 bytes deflate to 36)
# for ~2.4 us a job: such a payload is stored as it is, which RQ's Job.restore reads as it is (zlib.error).
UNCOMPRESSED_BYTES = 64
# json.dumps sets up a C encoder for every call (~1 us, more than a small payload's encoding); this one is made
# once, with json.dumps's defaults (RQ's JSONSerializer), so the bytes are the same. None without the C module.
_ENCODE = (
    c_make_encoder(None, json.JSONEncoder().default, encode_basestring_ascii, None, ": ", ", ", False, False, True)
    if c_make_encoder is not None
    else None
)


@dataclass
class Planned:
    """A checked job request, not yet written: its id, payload and what its hash and claim need."""

    id: str
    spec: TaskSpec
    lane: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: JobOptions
    data: bytes
    extra: dict[str, str] = field(default_factory=dict)
    parents: tuple[str, ...] = ()
    run_at: datetime | None = None
    claim_key: str | None = None
    claim_any_status: bool = False
    fingerprint: str = ""
    group: str | None = None


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
            "group": p.group,
            "batch_id": p.extra.get(BATCH_FIELD),
            "enqueued_at": batch_isotime(self.at) if self.status == "queued" else None,
            "started_at": None,
            "ended_at": None,
            "progress": None,
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
    """Return `payload` as RQ stores a job's data: zlib-compressed, or as it is when shorter than UNCOMPRESSED_BYTES."""
    if len(payload) < UNCOMPRESSED_BYTES:
        return payload
    if len(payload) > SMALL_PAYLOAD_BYTES:
        return zlib.compress(payload)
    compressor = zlib.compressobj(6, zlib.DEFLATED, 12, 4)
    return compressor.compress(payload) + compressor.flush()


def job_data(task: str, args: list[Any], kwargs: dict[str, Any]) -> bytes:
    """A job's stored data: RQ's JSONSerializer.dumps((task, None, args, kwargs)), compressed."""
    payload = (task, None, args, kwargs)
    text = "".join(_ENCODE(payload, 0)) if _ENCODE is not None else json.dumps(payload)
    return compress(text.encode())


# What the write script needs to build a job's keys from its id (RQ's shapes, from service.core.keys).
KEY_SHAPES = {
    "job_prefix": keys.JOB_PREFIX,
    "placeholder": PLACEHOLDER_ID,
    "dependents": keys.DEPENDENTS_SHAPE,
    "dependencies": keys.DEPENDENCIES_SHAPE,
    "group_separator": keys.GROUP_SUFFIX.format(group=""),
    "lane_head": keys.LANE_HEAD,
    "ungrouped": keys.UNGROUPED,
}
KEY_SHAPES_JSON = json.dumps(KEY_SHAPES, separators=(",", ":"))[1:-1]
_LANE_KEYS: dict[str, dict[str, Any]] = {}


def lane_keys(lane: str) -> dict[str, Any]:
    """Return the keys a job in `lane` is written to, and ServiceQueue's push commands for it."""
    found = _LANE_KEYS.get(lane)
    if found is None:
        queue = ServiceQueue(lane, connection=Redis())  # never used to connect: only its commands are recorded
        found = _LANE_KEYS[lane] = {
            "queue": keys.queue_key(lane),
            "push": push_commands(queue),
            "scheduled": keys.scheduled_key(lane),
            "deferred": keys.deferred_key(lane),
            "groups": keys.groups_key(lane),
        }
    return found


def push_commands(queue: ServiceQueue) -> list[list[str]]:
    """Return ServiceQueue's push commands for PLACEHOLDER_ID, checked to be (list command, key, value)."""
    commands = queue.push_commands(PLACEHOLDER_ID)
    if any(len(c) != 3 or c[0] not in ("RPUSH", "LPUSH") for c in commands):
        raise RuntimeError(f"the write script cannot replay {commands!r}")
    return commands


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
    now = clock.utcnow()
    now_rq = utcformat(now.replace(tzinfo=None))
    templates: dict[tuple[JobOptions, str], int] = {}
    header: dict[str, Any] = {"now": now_rq, "claims": [], "counts": []}
    templates_json: list[str] = []
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
            templates_json.append(_template_json(p.options, status))
        score = str(calendar.timegm(p.run_at.utctimetuple())) if p.run_at is not None else ""
        jobs.append([p.id, index, score, len(p.data), _pairs(p.extra), p.parents, p.group or ""])
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
            claim_ttl=CLAIM_TTL_SECONDS,
            deferred_score=str(int(now.timestamp())),
        )
        if max_queued is not None:
            header["max_queued"] = max_queued
            header["lanes"] = [[*waiting_keys(lane), count, lane] for lane, count in added.items()]
        # Two arguments, not several per job: redis-py packs each argument in Python.
        # The templates and key shapes are the same from call to call: their JSON is made once.
        text = json.dumps(header, separators=(",", ":"))[:-1] + ',"templates":[' + ",".join(templates_json) + "],"
        args = [text + KEY_SHAPES_JSON + "}", b"".join(blobs)]
        reply = WRITE(keys=[keys.QUEUES_KEY, keys.METRICS_KEY], args=args, client=client)
        if not isinstance(client, Pipeline):
            check_written(reply)
    return outcome


def waiting_keys(lane: str) -> tuple[str, str, str]:
    """The keys whose jobs count as waiting in `lane`: its list, its scheduled and its deferred registries."""
    return keys.queue_key(lane), keys.scheduled_key(lane), keys.deferred_key(lane)


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


@lru_cache(maxsize=4096)
def _template_json(options: JobOptions, status: str) -> str:
    lane = lane_keys(options.lane)
    described = {
        "fields": list(template(options, status)),
        "status": status,
        "push": lane["push"],
        "registry": lane["scheduled"] if status == "scheduled" else lane["deferred"],
        "groups": lane["groups"],
    }
    return json.dumps(described, separators=(",", ":"))


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
