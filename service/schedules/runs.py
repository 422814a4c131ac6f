"""Schedule runs: turning a schedule's due times into RQ jobs, atomically and at most once each.

Every run is a fresh ServiceJob with id `<schedule_id>-<due epoch seconds>`
and `schedule_id`/`scheduled_for` in its meta. Python builds each job's
hash fields (RQ's own `Job.to_dict()` layout, JSON serializer) once per
spec; one Lua script per batch then, per schedule and atomically:

- checks the scheduler lease is still ours (fencing: a paused ex-leader
  cannot fire) and that the schedule's next due time and update time
  (fields n and u) are still the ones we planned on (compare-and-set: a
  concurrent upsert, pause, delete or other leader wins);
- applies the overlap policy against the previous run's live job status;
- creates the job hash only if absent and pushes it to its lane, so one
  due time can never become two jobs;
- moves the schedule to its next due time and records runs and counters.

Per run the script does what it must and little else: the schedule's state
is read with one HMGET (the compare-and-set's fields included) and written
back with one HSET (run records included), the job hash is a COPY of its template (written once per call)
plus its data and meta, and the due scores, stats totals, lane pushes and
doorbells of the whole batch are sent once per call. Job layouts travel
once per distinct spec.
"""

from __future__ import annotations

import functools
import json
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from redis import Redis
from redis.exceptions import NoScriptError
from rq.serializers import JSONSerializer
from rq.utils import utcformat

from service.core import keys
from service.core.keys import PLACEHOLDER_ID, QUEUES_KEY, ScheduleKeys, queue_key
from service.core.lua import script
from service.core.metrics import LAG_BUCKETS_MS
from service.jobs.callbacks import PAUSE_ON_FAILURE
from service.jobs.context import scheduled_for  # noqa: F401 - kept importable from here
from service.jobs.damage import GROUP_FIELD
from service.jobs.model import ServiceQueue
from service.jobs.template import JobOptions, template
from service.jobs.writer import compress
from service.ops import hooks
from service.schedules.spec import ScheduleSpec, SkipDates, from_ms, isoformat, to_ms, to_us
from service.schedules.store import (
    DUE_KEYS,
    READ_DUE,
    RUNS_KEPT,
    Due,
    StoredSchedule,
    due_args,
    due_times,
    load_spec,
    parse_due,
)
from service.tasks.registry import REGISTRY, RetryPolicy, TaskSpec

log = logging.getLogger(__name__)

# What a run record says (service.schedules.store): the kind of a created run, and why a due time made none.
SCHEDULED, BUFFERED, MANUAL, BACKFILL = "s", "b", "m", "f"
MISSED, COALESCED, CALENDAR = "m", "c", "k"
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
            "schedule": ScheduleKeys.prefix,
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
        "group_field": GROUP_FIELD,
        "group_separator": keys.GROUP_SUFFIX.format(group=""),
        "lane_head": keys.LANE_HEAD,
        "scratch": ScheduleKeys.fire_scratch,
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
            counts = {code: 0 for code in (MISSED, COALESCED, CALENDAR)}
            for _, code in entry.records:
                counts[code] += 1
            if counts[MISSED]:
                log.warning(
                    "schedule %s: %d run(s) missed (later than misfire_grace_time)", entry.schedule_id, counts[MISSED]
                )
            notify("schedule.missed", entry.schedule_id, counts[MISSED])
            notify("schedule.coalesced", entry.schedule_id, counts[COALESCED])
            notify("schedule.skipped", entry.schedule_id, counts[CALENDAR], reason="calendar")
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
    fires: list[tuple[int, str]] = field(default_factory=list)  # (due ms, kind code: KINDS)
    records: list[tuple[int, str]] = field(default_factory=list)  # (due ms, MISSED | COALESCED | CALENDAR)
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
    """A template's run job, minus what differs per run (data, meta): flat hash fields, lane key, push commands."""

    fields: list[str]
    queue_key: str
    push: list[list[str]]
    fold: bool  # every push command may be folded with the same command of other runs
    retry: RetryPolicy | None  # a policy whose intervals each run draws (jitter), else None
    groups: str  # the lane's group turns (a run with a group is indexed there, as the job writer does)


class JobTemplates:
    """Run job templates per stored template (service.jobs.template), built once; the script copies them per run."""

    def __init__(self, connection: Redis) -> None:
        self.connection = connection
        self._cache: dict[str, Template] = {}

    def get(self, template_json: str) -> Template:
        cached = self._cache.get(template_json)
        if cached is None:
            if len(self._cache) > 65_536:
                self._cache.clear()
            cached = self._cache[template_json] = self._build(load_spec(template_json))
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
        queue = ServiceQueue(spec.lane, connection=self.connection)
        push = queue.push_commands(PLACEHOLDER_ID)  # the lane and any wake-up, the id as a placeholder
        fold = all(op[0] in FOLDABLE_COMMANDS and len(op) == 3 for op in push)
        retry_drawn = retry if retry.jittered else None
        return Template(fields, queue_key(spec.lane), push, fold, retry_drawn, keys.groups_key(spec.lane))


@functools.lru_cache(maxsize=65_536)
def call_parts(call_json: str) -> tuple[list[Any], dict[str, Any], str | None]:
    """A schedule's call: (args, kwargs, group); ValueError when it is not one (a record planted in Redis)."""
    call = json.loads(call_json) if call_json else [[], {}]
    if not isinstance(call, list) or len(call) not in (2, 3):
        raise ValueError("a schedule's call is [args, kwargs] or [args, kwargs, group]")
    args, kwargs, group = call[0], call[1], call[2] if len(call) == 3 else None
    if not isinstance(args, list) or not isinstance(kwargs, dict) or not isinstance(group, str | None):
        raise ValueError("a schedule's call is [args, kwargs] or [args, kwargs, group]")
    return args, kwargs, group


def firable(stored: StoredSchedule) -> bool:
    """True when what firing reads of `stored` reads: its template, its call, its due times (cheap: cached)."""
    try:
        stored.template, call_parts(stored.call_json), stored.next_due, stored.buffered_due  # noqa: B018
        return True
    except Exception:  # whatever a record planted in Redis holds
        return False


@functools.lru_cache(maxsize=65_536)
def call_data(task: str, call_json: str) -> bytes:
    """RQ's own encoding of a run's call (Job.to_dict's data), made once per distinct task and call."""
    args, kwargs, _ = call_parts(call_json)
    return compress(JSONSerializer.dumps((task, None, args, kwargs)))


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
        reply = FIRE(keys=self.keys, args=self._args(entries, stored, now), client=self.connection)
        return self._results(entries, reply)

    def stream(self, on_fired: Callable[[list[Entry], list[Any] | None], None]) -> Stream:
        """A Stream of fire calls and due reads on one connection of its own (close it after)."""
        return Stream(self, on_fired)

    def _args(self, entries: list[Entry], stored: dict[str, StoredSchedule], now: datetime) -> list[Any]:
        numbers: dict[str, tuple[int, RetryPolicy | None, ScheduleSpec]] = {}
        templates: list[list[Any]] = []
        blob_numbers: dict[tuple[str, str], int] = {}
        blobs: list[bytes] = []
        plans = Plans(to_ms(now))
        rows = []
        for entry in entries:
            schedule = stored[entry.schedule_id]
            template_json = schedule.template_json
            found = numbers.get(template_json)
            if found is None:
                template = self.templates.get(template_json)
                found = numbers[template_json] = (len(templates) + 1, template.retry, load_spec(template_json))
                fields = [template.fields, template.queue_key, template.push, template.fold, template.retry is not None,
                          template.groups]  # fmt: skip
                templates.append(fields)
            number, retry, spec = found
            call = (spec.task, schedule.call_json)
            blob = blob_numbers.get(call)
            if blob is None:
                blobs.append(call_data(*call))
                blob = blob_numbers[call] = len(blobs)
            plan = plans.number(entry, spec, number)
            fields = schedule.fields  # n and u as read: the script fires a due entry only if they are unchanged
            next_score = None if entry.next_score is None else str(entry.next_score)
            row = [entry.schedule_id, plan, blob, fields.get("n") or "", fields.get("u") or "", next_score]
            if retry is not None:  # each run draws its own retry intervals
                row.append([json.dumps(retry.intervals()) for _ in entry.fires])
            group = call_parts(schedule.call_json)[2]
            if group is not None:  # row[7]: its runs' fair-share group
                row += [None] * (7 - len(row)) + [group]
            rows.append(row)
        now_rq = utcformat(now.astimezone(UTC).replace(tzinfo=None))
        args: list[Any] = [self.owner, to_ms(now), now_rq, CONFIG, RUNS_KEPT]
        args += [json.dumps(templates, separators=(",", ":")), plans.dump(), json.dumps(rows, separators=(",", ":"))]
        return [*args, *blobs]

    def _results(self, entries: list[Entry], reply: Any) -> list[Any] | None:
        results = json.loads(reply)
        if results == [-1] and self.owner:
            return None
        return [_result(entry, result) for entry, result in zip(entries, results, strict=True)]


class Stream:
    """Fire calls and due reads sent on one connection, each before the replies to those before it are read.

    Redis runs them in the order sent, so Python plans and encodes chunk k+1
    (or parses the next batch's due read) while Redis runs chunk k: a pass
    takes about the longer of the two, not their sum. Each fire call's
    results go to `on_fired` in order (None: the lease is lost). A connection
    closed with replies unread is dropped, never handed on.
    """

    def __init__(self, firing: Firing, on_fired: Callable[[list[Entry], list[Any] | None], None]) -> None:
        self.firing, self.on_fired = firing, on_fired
        self.pool = firing.connection.connection_pool
        self.connection = self.pool.get_connection()
        self.sent: deque[tuple[list[Entry] | None, list[Any]]] = deque()  # (entries, args); None: a due read
        self.fires = 0  # fire calls sent and not answered yet
        self.reloaded = False  # a reply said NOSCRIPT: every call sent before the script was loaded is run again
        self._due: Due | None = None

    def fire(self, entries: list[Entry], stored: dict[str, StoredSchedule], now: datetime) -> None:
        args = self.firing._args(entries, stored, now)
        self.connection.send_command("EVALSHA", FIRE.sha, len(self.firing.keys), *self.firing.keys, *args)
        self.sent.append((entries, args))
        self.fires += 1

    def read_due(self, max_score_ms: int, limit: int, after: tuple[str, int] | None = None) -> None:
        """Send a due read (store.read_due); due() answers it once the calls sent before it are answered."""
        args = due_args(max_score_ms, limit, after)
        self.connection.send_command("EVALSHA", READ_DUE.sha, len(DUE_KEYS), *DUE_KEYS, *args)
        self.sent.append((None, args))

    def collect(self, in_flight: int = 0) -> None:
        """Read replies until at most `in_flight` fire calls are unanswered (none after a lost script, below)."""
        while self.fires > (0 if self.reloaded else in_flight):
            self._receive()
        self.reloaded = self.reloaded and bool(self.sent)

    def due(self) -> Due:
        """The answer to the due read sent last (the fire calls sent before it are answered first)."""
        while self._due is None:
            self._receive()
        if self.reloaded:
            self.collect()
        due, self._due = self._due, None
        return due

    def _receive(self) -> None:
        entries, args = self.sent.popleft()
        script, keys = (READ_DUE, DUE_KEYS) if entries is None else (FIRE, self.firing.keys)
        try:
            reply = self.connection.read_response()
        except NoScriptError:
            # Redis lost its scripts (a restart): this call did not run; load and run it now. The calls sent
            # after it failed alike, and are run again in turn before any new one is sent (collect), so runs
            # keep their order.
            reply, self.reloaded = script(keys=keys, args=args, client=self.firing.connection), True
        if entries is None:
            self._due = parse_due(reply)
            return
        self.fires -= 1
        self.on_fired(entries, self.firing._results(entries, reply))

    def close(self) -> None:
        if self.sent:
            self.connection.disconnect()
        self.pool.release(self.connection)


def _result(entry: Entry, result: Any) -> Any:
    """One entry's result as the script answers it, in Firing.run's shape."""
    if isinstance(result, dict):  # cjson: {} is an empty list
        return []
    if entry.mode == "due" and isinstance(result, int) and result >= 0:  # only created: [created, 0, 0]
        return [result, 0, 0]
    return result


class Plans:
    """What entries alike share in one fire call: their fires and records worked out once, text included.

    A burst of schedules with one template and one due time sends one plan
    and, per schedule, its id, plan number, data blob and scores: the script
    decodes and formats next to nothing per run (see fire.lua's layouts).
    """

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self.numbers: dict[tuple[Any, ...], int] = {}
        self.plans: list[list[Any]] = []

    def number(self, entry: Entry, spec: ScheduleSpec, template: int) -> int:
        """The number of `entry`'s plan (1-based), made on first use."""
        target = entry.first_target if entry.first_target != entry.first_due else None
        key = (template, entry.mode, tuple(entry.fires), tuple(entry.records), target, entry.first_due,
               entry.next_due, entry.buffered)  # fmt: skip
        found = self.numbers.get(key)
        if found is None:
            self.plans.append(self._plan(entry, spec, template))
            found = self.numbers[key] = len(self.plans)
        return found

    def _plan(self, entry: Entry, spec: ScheduleSpec, template: int) -> list[Any]:
        now_ms = self.now_ms
        fires = []
        for due, kind in entry.fires:
            offset = now_ms - due
            lag = None
            if entry.mode == "due" and kind == SCHEDULED:
                # The first due time was aimed at its jittered score; lag is measured from there.
                target = entry.first_target if entry.first_target is not None and due == entry.first_due else due
                lag = max(0, now_ms - target)
            record = f"{due}:e{kind}:{offset}" + (f":{lag}" if lag is not None and lag != offset else "")
            meta_tail = f'", "scheduled_for": "{iso_ms(due)}"}}'
            others = [f"{due}:{code}:{offset}" for code in ("s", "d", "b")]  # skipped, dropped, buffered
            fires.append([due, kind, f"-{due // 1000}", meta_tail, record, lag, lag_bucket(lag), *others])
        records = [[code, f"{due}:{code}:{now_ms - due}"] for due, code in entry.records]
        next_due = None if entry.next_due is None else str(entry.next_due)
        return [entry.mode, template, fires, records, spec.overlap, next_due, spec.repeat, entry.buffered]

    def dump(self) -> str:
        return json.dumps(self.plans, separators=(",", ":"))


def lag_bucket(lag: int | None) -> int | None:
    """The number (1-based) of the lag histogram bucket `lag` ms falls in; the last is +Inf."""
    if lag is None:
        return None
    return next((n for n, limit in enumerate(LAG_BUCKETS_MS, 1) if lag <= limit), len(LAG_BUCKETS_MS) + 1)


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

    def dues_from(self, first: int, now_us: int) -> list[int]:
        """The due times from `first` to now (at most MAX_CATCHUP; the next pass goes on from the last)."""
        dues = [first]
        if not self.one_shot:
            due = self.times.next_after(first)
            while due is not None and due * 1000 <= now_us and len(dues) < MAX_CATCHUP:
                dues.append(due)
                due = self.times.next_after(due)
        return dues


@functools.lru_cache(maxsize=200_000)
def planner(spec_json: str) -> Planner:
    return Planner(spec_json)


def plan_due(stored: StoredSchedule, score: int, now: datetime, skip: SkipDates | None = None) -> Entry:
    """Return what firing `stored` (due at `score`) at `now` means: runs, missed, coalesced, skipped, next due time."""
    return plan_due_ms(stored, score, to_ms(now), to_us(now), skip)


def plan_due_ms(stored: StoredSchedule, score: int, now_ms: int, now_us: int, skip: SkipDates | None = None) -> Entry:
    """plan_due with `now` given as epoch ms (rounded, for lateness) and exact epoch µs (for what is due).

    A due time on a date `skip` names is recorded as skipped (reason calendar)
    before grace and coalesce judge the others.
    """
    plan = planner(stored.template_json)
    first = stored.next_due or score
    dues = plan.dues_from(first, now_us)
    next_due = plan.times.next_after(dues[-1])
    records: list[tuple[int, str]] = []
    if skip is not None:
        records = [(due, CALENDAR) for due in dues if skip(due)]
        if records:
            dues = [due for due in dues if not skip(due)]
    runnable = _judge(plan, dues, first, score, now_ms, records)
    if plan.coalesce and runnable:  # all but the newest coalesce; all of them while a later pass goes on from here
        keep = 0 if next_due is not None and next_due * 1000 <= now_us else 1
        records += [(due, COALESCED) for due in runnable[: len(runnable) - keep]]
        runnable = runnable[len(runnable) - keep :]
    if len(records) > 1:
        records.sort()
    fires = [(due, SCHEDULED) for due in runnable]
    if plan.buffer_one:
        buffered = stored.buffered_due
        if buffered is not None:
            fires.insert(0, (buffered, BUFFERED))
    entry = Entry(stored.id, "due", fires, records, score, next_due, jittered(plan.spec, next_due), None, score, first)
    return entry


def _judge(plan: Planner, dues: list[int], first: int, score: int, now_ms: int, records: list) -> list[int]:
    """The due times still within their grace; the others are appended to `records` as missed."""
    if plan.grace_ms is None:
        return dues
    runnable = []
    for due in dues:  # the first due time was aimed at its jittered score: it is late from there
        if now_ms - (score if due == first else due) <= plan.grace_ms:
            runnable.append(due)
        else:
            records.append((due, MISSED))
    return runnable


def next_run(stored: StoredSchedule, skip: SkipDates | None) -> int | None:
    """Return the next due time of `stored` that fires (epoch ms): its next due time, past the dates `skip` names."""
    due = stored.next_due
    if skip is None:
        return due
    times = due_times(stored.template_json)
    while due is not None and skip(due):  # each turn leaves a skipped day behind: as many turns as dates at most
        due = times.next_after(to_ms(skip.next_day(from_ms(due))) - 1)
    return due


def fire_manual(connection: Redis, stored: StoredSchedule, dues_ms: list[int], kind: str, now: datetime) -> list[dict]:
    """Create runs of `stored` for `dues_ms` now (run-now, backfill), each at most once; return what happened."""
    entry = Entry(stored.id, "manual", fires=[(d, {"manual": MANUAL, "backfill": BACKFILL}[kind]) for d in dues_ms])
    results = Firing(connection).run([entry], {stored.id: stored}, now)
    created = results[0] if results and isinstance(results[0], list) else [0] * len(dues_ms)
    return [
        {"scheduled_for": isoformat(from_ms(due)), "job_id": run_job_id(stored.id, due), "created": bool(flag)}
        for due, flag in zip(dues_ms, created, strict=True)
    ]
