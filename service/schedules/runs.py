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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from redis import Redis
from rq import Retry
from rq.callbacks import Callback
from rq.defaults import RQ_KEY_PREFIX
from rq.utils import utcformat

from service.core.keys import ScheduleKeys
from service.jobs.callbacks import PAUSE_ON_FAILURE
from service.jobs.context import scheduled_for  # noqa: F401 - kept importable from here
from service.jobs.model import ServiceJob, ServiceQueue
from service.schedules.spec import ScheduleSpec, from_ms, isoformat, to_ms, to_us
from service.schedules.store import RUNS_KEPT, StoredSchedule, due_times, load_spec
from service.tasks.registry import REGISTRY, RetryPolicy, TaskSpec

log = logging.getLogger(__name__)

# Catch-up after downtime enumerates at most this many due times per
# schedule per pass; the rest are handled by the next pass (nothing lost).
MAX_CATCHUP = 1000
JOB_ID_PLACEHOLDER = "<job-id>"
# A run in one of these states is "still queued or running" for the overlap policy.
ACTIVE_STATUSES = frozenset({"queued", "started", "scheduled", "deferred"})
# Variadic commands whose calls for one key the fire script may merge into one (same result, same order).
FOLDABLE_COMMANDS = frozenset({"RPUSH", "LPUSH", "SADD"})
# Job hash fields the fire script sets per run (or per call) rather than copying from the template.
PER_RUN_FIELDS = frozenset({"created_at", "enqueued_at", "meta", "data"})

FIRE_SCRIPT = """
local lease, due_key, buffered_key, queues_key, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local owner, now_ms, now_iso, now_rq = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local prefix, job_prefix, rq_prefix, keep = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
if owner ~= '' and redis.call('GET', lease) ~= owner then return '[-1]' end
local LAG_BUCKETS = {10, 50, 100, 250, 500, 1000, 2500, 5000, 10000}
-- A schedule's state is read with one HMGET, changed in a Lua table and
-- written back with one HSET (and HDEL), instead of a command per change.
local STATE = {'paused', 'last_job_id', 'buffered_due', 'runs', 'missed', 'skipped', 'dropped', 'coalesced',
  'lag_sum_ms', 'lag_count', 'lag_max_ms'}
local WRITTEN = {'last_job_id', 'buffered_due', 'runs', 'missed', 'skipped', 'dropped', 'coalesced',
  'lag_sum_ms', 'lag_count', 'lag_max_ms', 'lag_last_ms', 'last_run_at', 'next_due'}
local JOB_ID, null = '<job-id>', cjson.null
local function int(x) return string.format('%d', x) end
local function opt(v) if v == null then return nil end return v end

-- One job hash layout per distinct spec; only the meta value changes per run.
local templates = {}
for n, t in ipairs(cjson.decode(ARGV[9])) do
  local hash = {}
  for _, v in ipairs(t[1]) do hash[#hash + 1] = v end
  for _, v in ipairs({'created_at', now_rq, 'enqueued_at', now_rq, 'data', ARGV[10 + n], 'meta', ''}) do
    hash[#hash + 1] = v
  end
  local folds = {}
  for i, op in ipairs(t[3]) do folds[i] = op[1] .. ' ' .. op[2] end
  templates[n] = {hash = hash, queue_key = t[2], push = t[3], fold = t[4], folds = folds}
end

-- Batch totals (stats hash) and lane pushes are sent once per call, not per run.
local totals, pending, pending_keys, queued = {}, {}, {}, {}
local function total(name, n) totals[name] = (totals[name] or 0) + n end

local function flush()
  for _, k in ipairs(pending_keys) do redis.call(unpack(pending[k])) end
  pending, pending_keys = {}, {}
end

local function push(tpl, job_id)
  if not queued[tpl.queue_key] then redis.call('SADD', queues_key, tpl.queue_key); queued[tpl.queue_key] = true end
  for i, op in ipairs(tpl.push) do
    if tpl.fold then
      -- RPUSH/LPUSH/SADD k a, then k b == one call with a b: same order, same result.
      local k = tpl.folds[i]
      local acc = pending[k]
      if not acc then acc = {op[1], op[2]}; pending[k] = acc; pending_keys[#pending_keys + 1] = k end
      if op[3] == JOB_ID then acc[#acc + 1] = job_id else acc[#acc + 1] = op[3] end
      if #acc > 1000 then flush() end
    else
      local call = {}
      for n, v in ipairs(op) do if v == JOB_ID then call[n] = job_id else call[n] = v end end
      flush()
      redis.call(unpack(call))
    end
  end
end

local function load(sk)
  local v = redis.call('HMGET', sk, unpack(STATE))
  return {paused = v[1], last_job_id = v[2], buffered_due = v[3], runs = v[4], missed = v[5], skipped = v[6],
    dropped = v[7], coalesced = v[8], lag_sum_ms = v[9], lag_count = v[10], lag_max_ms = v[11], dirty = {}, log = {}}
end

local function set(s, name, value) s[name] = value; s.dirty[name] = true end
local function add(s, name, n) set(s, name, (tonumber(s[name]) or 0) + n) end

local function save(sk, s)
  local hset, hdel = {}, {}
  for _, name in ipairs(WRITTEN) do
    if s.dirty[name] then
      local v = s[name]
      if v == false then hdel[#hdel + 1] = name
      else hset[#hset + 1] = name; hset[#hset + 1] = type(v) == 'number' and int(v) or v end
    end
  end
  if #hset > 0 then redis.call('HSET', sk, unpack(hset)) end
  if #hdel > 0 then redis.call('HDEL', sk, unpack(hdel)) end
  if #s.log > 0 then
    local key = sk .. ':runs'
    if redis.call('LPUSH', key, unpack(s.log)) > keep then redis.call('LTRIM', key, 0, keep - 1) end
  end
end

local function record(s, rec) s.log[#s.log + 1] = cjson.encode(rec) end

local function active(s)
  local last = s.last_job_id
  if not last then return nil end
  local st = redis.call('HGET', job_prefix .. last, 'status')
  if st == 'queued' or st == 'started' or st == 'scheduled' or st == 'deferred' then return last, st end
  return nil
end

local function cancel(job_id, st)
  flush()  -- the job may have been pushed earlier in this call
  local jk = job_prefix .. job_id
  local origin = redis.call('HGET', jk, 'origin') or 'default'
  if st == 'started' then
    local worker = redis.call('HGET', jk, 'worker_name')
    if worker and worker ~= '' then
      redis.call('PUBLISH', rq_prefix .. ':pubsub:' .. worker, cjson.encode({command = 'stop-job', job_id = job_id}))
    end
  else
    redis.call('LREM', rq_prefix .. ':queue:' .. origin, 0, job_id)
    redis.call('ZREM', rq_prefix .. ':scheduled:' .. origin, job_id)
    redis.call('ZREM', rq_prefix .. ':deferred:' .. origin, job_id)
    redis.call('HSET', jk, 'status', 'canceled')
    redis.call('ZADD', rq_prefix .. ':canceled:' .. origin, math.floor(now_ms / 1000) + 86400, job_id)
  end
end

-- A fire is {due ms, kind, lag target ms, due ISO, job id}.
local function create(id, s, f, tpl, count_lag)
  local job_id = f[5]
  local jk = job_prefix .. job_id
  if redis.call('EXISTS', jk) == 1 then return 0 end
  local hash = tpl.hash
  hash[#hash] = '{"schedule_id": "' .. id .. '", "scheduled_for": "' .. f[4] .. '"}'
  redis.call('HSET', jk, unpack(hash))
  push(tpl, job_id)
  set(s, 'last_job_id', job_id)
  set(s, 'last_run_at', f[1])
  add(s, 'runs', 1)
  total('runs', 1)
  local rec = {scheduled_for = f[4], job_id = job_id, status = 'enqueued', enqueued_at = now_iso, kind = f[2]}
  if count_lag then
    local lag = math.max(0, now_ms - f[3])
    rec.lag_ms = lag
    add(s, 'lag_sum_ms', lag)
    add(s, 'lag_count', 1)
    set(s, 'lag_last_ms', lag)
    set(s, 'lag_max_ms', math.max(lag, tonumber(s.lag_max_ms) or 0))
    local bucket = 'lag_ms_bucket_inf'
    for _, limit in ipairs(LAG_BUCKETS) do
      if lag <= limit then bucket = 'lag_ms_bucket_' .. limit; break end
    end
    total(bucket, 1)
    total('lag_ms_sum', lag)
    total('lag_count', 1)
  end
  record(s, rec)
  return 1
end

local function skip(s, iso, status)
  add(s, status, 1)
  total(status, 1)
  record(s, {scheduled_for = iso, status = status, recorded_at = now_iso})
end

local function finished(s, limit) return limit and (tonumber(s.runs) or 0) >= limit end

-- An entry is {id, mode, template, fires, records, overlap, score, next_due, next_score, buffered, repeat}.
local function fire_due(e, s, tpl)
  local id, overlap, limit = e[1], e[6], opt(e[11])
  local created, skipped, dropped = 0, 0, 0
  local done = false
  for _, r in ipairs(e[5]) do skip(s, r[1], r[2]) end
  for _, f in ipairs(e[4]) do
    if finished(s, limit) then done = true; break end
    local last, st = active(s)
    if f[2] == 'buffered' then
      -- A run buffered earlier goes first once its predecessor has ended.
      if not last and s.buffered_due and tonumber(s.buffered_due) == f[1] then
        set(s, 'buffered_due', false)
        redis.call('SREM', buffered_key, id)
        created = created + create(id, s, f, tpl, false)
      end
    elseif last and overlap == 'skip' then
      skip(s, f[4], 'skipped')
      skipped = skipped + 1
    elseif last and overlap == 'buffer_one' then
      if s.buffered_due then
        skip(s, f[4], 'dropped')
        dropped = dropped + 1
      else
        set(s, 'buffered_due', f[1])
        redis.call('SADD', buffered_key, id)
        record(s, {scheduled_for = f[4], status = 'buffered', recorded_at = now_iso})
      end
    else
      if last and overlap == 'cancel_other' then cancel(last, st) end
      created = created + create(id, s, f, tpl, true)
    end
  end
  local next_score = opt(e[9])
  if done or finished(s, limit) or not next_score then
    redis.call('ZREM', due_key, id)
    set(s, 'next_due', '')
  else
    redis.call('ZADD', due_key, int(next_score), id)
    set(s, 'next_due', opt(e[8]) or '')
  end
  return {created, skipped, dropped}
end

local function fire_entry(e)
  local id, mode, tpl = e[1], e[2], templates[e[3]]
  local sk = prefix .. id
  if mode == 'due' then
    local score = redis.call('ZSCORE', due_key, id)
    if not score or tonumber(score) ~= e[7] then return -2 end
    local s = load(sk)
    if s.paused == '1' then redis.call('ZREM', due_key, id); return -2 end
    local result = fire_due(e, s, tpl)
    save(sk, s)
    return result
  end
  if redis.call('EXISTS', sk) == 0 then return -3 end
  local s = load(sk)
  if mode == 'buffer' then
    local buffered = opt(e[10])
    if not s.buffered_due or tonumber(s.buffered_due) ~= buffered or active(s) then return -2 end
    if s.paused == '1' then return -2 end
    set(s, 'buffered_due', false)
    redis.call('SREM', buffered_key, id)
    local created = create(id, s, e[4][1], tpl, false)
    save(sk, s)
    return created
  end
  local created = {}
  for n, f in ipairs(e[4]) do created[n] = create(id, s, f, tpl, false) end
  save(sk, s)
  return created
end

local results = {}
for n, e in ipairs(cjson.decode(ARGV[10])) do results[n] = fire_entry(e) end
flush()
for name, n in pairs(totals) do redis.call('HINCRBY', stats, name, int(n)) end
return cjson.encode(results)
"""


Listener = Callable[[str, str, int], None]
LISTENERS: list[Listener] = []


def on_schedule_event(listener: Listener) -> Listener:
    """Subscribe `listener(event, schedule_id, count)` to what the scheduler does.

    Events (in the scheduler process): fired, missed, coalesced, skipped, dropped.
    Usable as a decorator; a listener that raises is logged and ignored.
    """
    LISTENERS.append(listener)
    return listener


def emit(event: str, schedule_id: str, count: int) -> None:
    """Tell every listener about `count` runs of `schedule_id` that had `event`."""
    if count <= 0:
        return
    if event == "missed":
        log.warning("schedule %s: %d run(s) missed (later than misfire_grace_time)", schedule_id, count)
    for listener in LISTENERS:
        try:
            listener(event, schedule_id, count)
        except Exception:  # a user's hook must not stop the scheduler
            log.exception("schedule event listener failed on %s %s", event, schedule_id)
    # Imported here, not at the top: hooks is imported by every worker, which needs nothing of this module.
    from service.ops import hooks

    hooks.forward_schedule_event(event, schedule_id, count)


def report(entry: Entry, result: Any) -> int:
    """Emit the events of an applied entry; return how many run jobs it created."""
    if isinstance(result, list) and entry.mode == "due":
        created, skipped, dropped = result
        if entry.records:
            missed = sum(1 for _, status in entry.records if status == "missed")
            emit("missed", entry.schedule_id, missed)
            emit("coalesced", entry.schedule_id, len(entry.records) - missed)
        if skipped or dropped:
            emit("skipped", entry.schedule_id, skipped)
            emit("dropped", entry.schedule_id, dropped)
    else:
        created = max(int(result), 0) if isinstance(result, int) else sum(result)
    emit("fired", entry.schedule_id, created)
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


def retry_for(policy: RetryPolicy) -> Retry | None:
    if policy.max <= 0:
        return None
    if isinstance(policy.backoff, str):
        intervals = [min(10 * 2**n, 3600) for n in range(policy.max)]
    else:
        intervals = list(policy.backoff) or [0]
    return Retry(max=policy.max, interval=intervals)


class Template(NamedTuple):
    """A spec's run job, minus what differs per run: flat hash fields, data blob, lane key, push commands."""

    fields: list[str]
    data: bytes
    queue_key: str
    push: list[list[str]]
    fold: bool  # every push command may be folded with the same command of other runs


class JobTemplates:
    """RQ job hash fields per stored spec, built once with RQ's own Job.to_dict(); the script copies them per run."""

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
        queue = ServiceQueue(spec.lane, connection=self.connection)
        job = queue.create_job(
            spec.task,
            args=list(spec.args),
            kwargs=dict(spec.kwargs),
            timeout=task.timeout_seconds,
            result_ttl=task.result_ttl_seconds,
            failure_ttl=getattr(task, "failure_ttl_seconds", None),
            description=spec.description or spec.task,
            job_id="template",
            retry=retry_for(task.retry),
            on_failure=Callback(PAUSE_ON_FAILURE) if spec.pause_on_failure else None,
        )
        job.origin = queue.name
        raw = job.to_dict()
        fields = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in raw.items() if k not in PER_RUN_FIELDS}
        fields["status"] = "queued"
        fields["origin"] = queue.name
        push = queue.push_commands(JOB_ID_PLACEHOLDER)  # the lane and any wake-up, id as a placeholder
        fold = all(op[0] in FOLDABLE_COMMANDS and len(op) == 3 for op in push)
        return Template([x for item in fields.items() for x in item], raw["data"], queue.key, push, fold)


@functools.lru_cache(maxsize=65_536)
def iso_ms(due_ms: int) -> str:
    """Return `due_ms` as ISO 8601 UTC (cached: a burst formats the same few due times thousands of times)."""
    return isoformat(from_ms(due_ms))


class Firing:
    """Runs batches of Entries through the fire script; the owner token fences a stale leader."""

    def __init__(self, connection: Redis, owner: str = "", lease_key: str = "") -> None:
        self.connection = connection
        self.owner = owner
        self.lease_key = lease_key or "svc:no-lease"
        self.templates = JobTemplates(connection)
        self.keys = [self.lease_key, ScheduleKeys.due, ScheduleKeys.buffered, ServiceQueue.redis_queues_keys]
        self.keys.append(ScheduleKeys.stats)
        self._script = connection.register_script(FIRE_SCRIPT)

    def run(self, entries: list[Entry], stored: dict[str, StoredSchedule], now: datetime) -> list[Any] | None:
        """Apply `entries` atomically; return per entry the jobs created (<0: not applied), None if the lease is lost.

        A due entry's result is [created, skipped, dropped]; a buffer entry's 1 or 0; a manual entry's
        a list with 1 per run created and 0 per run that already existed.
        """
        if not entries:
            return []
        return self._results(self._script(keys=self.keys, args=self._args(entries, stored, now)))

    def _args(self, entries: list[Entry], stored: dict[str, StoredSchedule], now: datetime) -> list[Any]:
        numbers: dict[str, int] = {}
        templates: list[list[Any]] = []
        blobs: list[bytes] = []
        rows = []
        for entry in entries:
            schedule = stored[entry.schedule_id]
            number = numbers.get(schedule.spec_json)
            if number is None:
                template = self.templates.get(schedule.spec_json)
                number = numbers[schedule.spec_json] = len(templates) + 1
                templates.append([template.fields, template.queue_key, template.push, template.fold])
                blobs.append(template.data)
            rows.append(_row(entry, schedule.spec, number))
        now_rq = utcformat(now.astimezone(UTC).replace(tzinfo=None))
        args: list[Any] = [self.owner, to_ms(now), isoformat(now), now_rq, ScheduleKeys.prefix]
        args += [ServiceJob.redis_job_namespace_prefix, RQ_KEY_PREFIX, RUNS_KEPT]
        args += [json.dumps(templates, separators=(",", ":")), json.dumps(rows, separators=(",", ":")), *blobs]
        return args

    def _results(self, reply: Any) -> list[Any] | None:
        results = json.loads(reply)
        if results == [-1] and self.owner:
            return None
        return [[] if isinstance(result, dict) else result for result in results]  # cjson: {} is an empty list


def _row(entry: Entry, spec: ScheduleSpec, template: int) -> list[Any]:
    """Return the script's description of `entry` (see the entry and fire layouts in FIRE_SCRIPT)."""
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
