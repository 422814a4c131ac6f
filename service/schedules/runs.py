"""Schedule runs: turning a schedule's due times into RQ jobs, atomically and at most once each.

Every run is a fresh ServiceJob with id `<schedule_id>-<due epoch seconds>`
and `schedule_id`/`scheduled_for` in its meta. Python builds each job's
hash fields (RQ's own `Job.to_dict()` layout, JSON serializer) once per
spec; one Lua script per batch then, per schedule and atomically:

- checks the scheduler lease is still ours (fencing: a paused ex-leader
  cannot fire) and that the due score is still the one we planned on
  (compare-and-set: a concurrent upsert, pause or other leader wins);
- applies the overlap policy against the previous run's live job status;
- creates the job hash only if absent and pushes it to its lane, so one
  due time can never become two jobs;
- moves the schedule to its next due time and records runs and counters.

Per run the script does what it must and little else: the schedule's state
is read with one HMGET and written back with one HSET, its run records go
in one LPUSH, and the stats totals, lane pushes and doorbells of the whole
batch are sent once per call. Job layouts travel once per distinct spec.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from redis import Redis
from rq.serializers import JSONSerializer
from rq.utils import utcformat

from service.core import keys
from service.core.keys import PLACEHOLDER_ID, QUEUES_KEY, ScheduleKeys, queue_key
from service.core.lua import script
from service.core.metrics import LAG_BUCKETS_MS
from service.jobs.callbacks import PAUSE_ON_FAILURE
from service.jobs.context import scheduled_for  # noqa: F401 - kept importable from here
from service.jobs.model import ServiceQueue
from service.jobs.template import JobOptions, template
from service.ops import hooks
from service.schedules.spec import ScheduleSpec, from_ms, isoformat, to_ms, to_us
from service.schedules.store import RUNS_KEPT, StoredSchedule, due_times, load_spec
from service.tasks.registry import REGISTRY, RetryPolicy, TaskSpec

log = logging.getLogger(__name__)

# Catch-up after downtime enumerates at most this many due times per
# schedule per pass; the rest are handled by the next pass (nothing lost).
MAX_CATCHUP = 1000
# A run in one of these states is "still queued or running" for the overlap policy.
ACTIVE_STATUSES = frozenset({"queued", "started", "scheduled", "deferred"})
# Variadic commands whose calls for one key the fire script may merge into one (same result, same order).
FOLDABLE_COMMANDS = frozenset({"RPUSH", "LPUSH", "SADD"})
# What the fire script needs besides its KEYS (see fire.lua): RQ's and our key shapes for the keys it
# builds from data (a run's job, a canceled job's lane, registries and ended channel, a worker's command channel),
# the id placeholder in push commands, and the lag histogram's buckets.
CONFIG = json.dumps(
    {
        "keys": {
            "schedule": [ScheduleKeys.prefix, ScheduleKeys.runs_suffix],
            "job": keys.JOB_PREFIX,
            "queue": keys.QUEUE_PREFIX,
            "scheduled": keys.SCHEDULED_PREFIX,
            "deferred": keys.DEFERRED_PREFIX,
            "canceled": keys.CANCELED_PREFIX,
            "pubsub": keys.PUBSUB_PREFIX,
            "ended": keys.ENDED_PREFIX,
        },
        "placeholder": PLACEHOLDER_ID,
        "lag_buckets": LAG_BUCKETS_MS,
    }
)
FIRE = script("fire")


def notify(event: str, schedule_id: str, count: int, **extra: Any) -> None:
    """Emit hook event `event` for `count` runs of `schedule_id` (none for a count of 0)."""
    if count > 0:
        hooks.emit(event, schedule_id=schedule_id, count=count, **extra)


def report(entry: Entry, result: Any) -> int:
    """Emit the events of an applied entry; return how many run jobs it created."""
    if isinstance(result, list) and entry.mode == "due":
        created, skipped, dropped = result
        if entry.records:
            missed = sum(1 for _, status in entry.records if status == "missed")
            if missed:
                log.warning("schedule %s: %d run(s) missed (later than misfire_grace_time)", entry.schedule_id, missed)
            notify("schedule.missed", entry.schedule_id, missed)
            notify("schedule.coalesced", entry.schedule_id, len(entry.records) - missed)
        notify("schedule.skipped", entry.schedule_id, skipped, reason="skipped")
        notify("schedule.skipped", entry.schedule_id, dropped, reason="dropped")
    else:
        created = max(int(result), 0) if isinstance(result, int) else sum(result)
    notify("schedule.fired", entry.schedule_id, created)
    return created


@dataclass(slots=True)
class Entry:
    """One schedule's part of a firing batch: what to record, which runs to create, where to go next."""

    schedule_id: str
    mode: str  # due | buffer | manual
    fires: list[tuple[int, str]] = field(default_factory=list)  # (due ms, kind)
    records: list[tuple[int, str]] = field(default_factory=list)  # (due ms, missed|coalesced)
    score: int | None = None
    next_due: int | None = None
    next_score: int | None = None
    buffered: int | None = None
    first_target: int | None = None
    first_due: int | None = None


def run_job_id(schedule_id: str, due_ms: int) -> str:
    """Return the id of the run of `schedule_id` due at `due_ms`: `<schedule_id>-<due epoch seconds>`."""
    return f"{schedule_id}-{due_ms // 1000}"


class Template(NamedTuple):
    """A spec's run job, minus what differs per run: flat hash fields, data blob, lane key, push commands."""

    fields: list[str]
    data: bytes
    queue_key: str
    push: list[list[str]]
    fold: bool  # every push command may be folded with the same command of other runs
    retry: RetryPolicy | None  # a policy whose intervals each run draws (jitter), else None


class JobTemplates:
    """Run job templates per stored spec (service.jobs.template), built once; the script copies them per run."""

    def __init__(self, connection: Redis) -> None:
        self.connection = connection
        self._cache: dict[str, Template] = {}

    def get(self, spec_json: str) -> Template:
        cached = self._cache.get(spec_json)
        if cached is None:
            if len(self._cache) > 200_000:
                self._cache.clear()
            cached = self._cache[spec_json] = self._build(load_spec(spec_json))
        return cached

    def _build(self, spec: ScheduleSpec) -> Template:
        task = REGISTRY.get(spec.task) if spec.task in REGISTRY else TaskSpec(spec.task, func=print)
        retry = task.retry if task.retry.max > 0 else RetryPolicy(0, ())
        on_failure = PAUSE_ON_FAILURE if spec.pause_on_failure else None
        options = JobOptions(
            spec.task,
            spec.lane,
            task.timeout_seconds,
            task.result_ttl_seconds,
            task.failure_ttl_seconds,
            spec.description or spec.task,
            retry,
            on_failure,
        )
        fields = list(template(options, "queued"))
        # RQ's own encoding of the call (Job.to_dict), worked out once per spec.
        data = zlib.compress(JSONSerializer.dumps((spec.task, None, list(spec.args), dict(spec.kwargs))))
        queue = ServiceQueue(spec.lane, connection=self.connection)
        push = queue.push_commands(PLACEHOLDER_ID)  # the lane and any wake-up, the id as a placeholder
        fold = all(op[0] in FOLDABLE_COMMANDS and len(op) == 3 for op in push)
        return Template(fields, data, queue_key(spec.lane), push, fold, retry if retry.jittered else None)


@functools.lru_cache(maxsize=65_536)
def iso_ms(due_ms: int) -> str:
    """Return `due_ms` as ISO 8601 UTC (cached: a burst formats the same few due times thousands of times)."""
    return isoformat(from_ms(due_ms))


class Firing:
    """Runs batches of Entries through the fire script; the owner token fences a stale leader."""

    def __init__(self, connection: Redis, owner: str = "", lease_key: str = ScheduleKeys.no_lease) -> None:
        self.connection = connection
        self.owner = owner
        self.templates = JobTemplates(connection)
        self.keys = [lease_key, ScheduleKeys.due, ScheduleKeys.buffered, QUEUES_KEY, ScheduleKeys.stats]

    def run(self, entries: list[Entry], stored: dict[str, StoredSchedule], now: datetime) -> list[Any] | None:
        """Apply `entries` atomically; return per entry the jobs created (<0: not applied), None if the lease is lost.

        A due entry's result is [created, skipped, dropped]; a buffer entry's 1 or 0; a manual entry's
        a list with 1 per run created and 0 per run that already existed.
        """
        if not entries:
            return []
        return self._results(FIRE(keys=self.keys, args=self._args(entries, stored, now), client=self.connection))

    def _args(self, entries: list[Entry], stored: dict[str, StoredSchedule], now: datetime) -> list[Any]:
        numbers: dict[str, tuple[int, RetryPolicy | None]] = {}
        templates: list[list[Any]] = []
        blobs: list[bytes] = []
        rows = []
        for entry in entries:
            schedule = stored[entry.schedule_id]
            found = numbers.get(schedule.spec_json)
            if found is None:
                template = self.templates.get(schedule.spec_json)
                found = numbers[schedule.spec_json] = (len(templates) + 1, template.retry)
                fields = [template.fields, template.queue_key, template.push, template.fold, template.retry is not None]
                templates.append(fields)
                blobs.append(template.data)
            rows.append(_row(entry, schedule.spec, *found))
        now_rq = utcformat(now.astimezone(UTC).replace(tzinfo=None))
        args: list[Any] = [self.owner, to_ms(now), isoformat(now), now_rq, CONFIG, RUNS_KEPT]
        args += [json.dumps(templates, separators=(",", ":")), json.dumps(rows, separators=(",", ":")), *blobs]
        return args

    def _results(self, reply: Any) -> list[Any] | None:
        results = json.loads(reply)
        if results == [-1] and self.owner:
            return None
        return [[] if isinstance(result, dict) else result for result in results]  # cjson: {} is an empty list


def _row(entry: Entry, spec: ScheduleSpec, template: int, retry: RetryPolicy | None) -> list[Any]:
    """Return the fire script's description of `entry` (see the entry and fire layouts in fire.lua)."""
    schedule_id, first_target, first_due = entry.schedule_id, entry.first_target, entry.first_due
    fires = [
        [
            due,
            kind,
            # The first due time was aimed at its jittered score; lag is measured from there.
            first_target if first_target is not None and due == first_due else due,
            iso_ms(due),
            run_job_id(schedule_id, due),
        ]
        for due, kind in entry.fires
    ]
    if retry is not None:  # each run draws its own retry intervals
        for fire in fires:
            fire.append(json.dumps(retry.intervals()))
    records = [[iso_ms(due), status] for due, status in entry.records]
    return [
        schedule_id,
        entry.mode,
        template,
        fires,
        records,
        spec.overlap,
        entry.score,
        entry.next_due,
        entry.next_score,
        entry.buffered,
        spec.repeat,
    ]


def jittered(spec: ScheduleSpec, due_ms: int | None) -> int | None:
    """Return the score the due time `due_ms` is fired at: the due time plus 0..jitter seconds."""
    if due_ms is None:
        return None
    return due_ms + (int(random.uniform(0, spec.jitter) * 1000) if spec.jitter else 0)


class Planner:
    """What planning needs of one stored spec, worked out once: due times in ms, grace, coalesce, overlap."""

    def __init__(self, spec_json: str) -> None:
        self.spec = spec = load_spec(spec_json)
        self.times = due_times(spec_json)
        self.one_shot = spec.at is not None
        self.grace_ms = None if spec.misfire_grace_time is None else spec.misfire_grace_time * 1000
        self.coalesce = spec.coalesce
        self.buffer_one = spec.overlap == "buffer_one"


@functools.lru_cache(maxsize=200_000)
def planner(spec_json: str) -> Planner:
    return Planner(spec_json)


def plan_due(stored: StoredSchedule, score: int, now: datetime) -> Entry:
    """Return what firing `stored` (due at `score`) at `now` means: runs, missed, coalesced, next due time."""
    return plan_due_ms(stored, score, to_ms(now), to_us(now))


def plan_due_ms(stored: StoredSchedule, score: int, now_ms: int, now_us: int) -> Entry:
    """plan_due with `now` given as epoch ms (rounded, for lateness) and exact epoch µs (for what is due)."""
    plan = planner(stored.spec_json)
    times = plan.times
    first = stored.number("next_due") or score
    dues = [first]
    if not plan.one_shot:
        due = times.next_after(first)
        while due is not None and due * 1000 <= now_us and len(dues) < MAX_CATCHUP:
            dues.append(due)
            due = times.next_after(due)
    grace_ms = plan.grace_ms
    records: list[tuple[int, str]] = []
    if grace_ms is None:
        runnable = dues
    else:
        runnable = []
        for due in dues:
            if now_ms - (score if due == first else due) <= grace_ms:
                runnable.append(due)
            else:
                records.append((due, "missed"))
    if plan.coalesce and len(runnable) > 1:
        records += [(due, "coalesced") for due in runnable[:-1]]
        runnable = runnable[-1:]
        records.sort()
    fires = [(due, "scheduled") for due in runnable]
    if plan.buffer_one:
        buffered = stored.number("buffered_due")
        if buffered is not None:
            fires.insert(0, (buffered, "buffered"))
    next_due = times.next_after(dues[-1])
    entry = Entry(stored.id, "due", fires, records, score, next_due, jittered(plan.spec, next_due), None, score, first)
    return entry


def fire_manual(connection: Redis, stored: StoredSchedule, dues_ms: list[int], kind: str, now: datetime) -> list[dict]:
    """Create runs of `stored` for `dues_ms` now (run-now, backfill), each at most once; return what happened."""
    entry = Entry(stored.id, "manual", fires=[(d, kind) for d in dues_ms])
    results = Firing(connection).run([entry], {stored.id: stored}, now)
    created = results[0] if results and isinstance(results[0], list) else [0] * len(dues_ms)
    return [
        {"scheduled_for": isoformat(from_ms(due)), "job_id": run_job_id(stored.id, due), "created": bool(flag)}
        for due, flag in zip(dues_ms, created, strict=True)
    ]
