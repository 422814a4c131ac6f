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
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq import Retry, get_current_job
from rq.callbacks import Callback
from rq.defaults import RQ_KEY_PREFIX
from rq.serializers import JSONSerializer
from rq.utils import utcformat

from service.queues import ServiceJob, ServiceQueue
from service.schedule_spec import ScheduleSpec, from_ms, isoformat, to_ms
from service.schedule_store import RUNS_KEPT, ScheduleKeys, StoredSchedule, cron_rule, load_spec
from service.task_registry import REGISTRY, RetryPolicy, TaskSpec

log = logging.getLogger(__name__)

# Catch-up after downtime enumerates at most this many due times per
# schedule per pass; the rest are handled by the next pass (nothing lost).
MAX_CATCHUP = 1000
FAILURE_CALLBACK = "service.schedule_runs.on_run_failed"
JOB_ID_PLACEHOLDER = "<job-id>"
# A run in one of these states is "still queued or running" for the overlap policy.
ACTIVE_STATUSES = frozenset({"queued", "started", "scheduled", "deferred"})
PUSH_COMMANDS = frozenset({"rpush", "lpush", "sadd", "zadd"})

FIRE_SCRIPT = """
local lease, due_key, buffered_key, queues_key, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local LAG_BUCKETS = {10, 50, 100, 250, 500, 1000, 2500, 5000, 10000}
local owner, now_ms, now_iso = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local prefix, job_prefix, rq_prefix, keep = ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
local count = tonumber(ARGV[8])
if owner ~= '' and redis.call('GET', lease) ~= owner then return {-1} end
local function int(x) return string.format('%d', x) end
local JOB_ID = '<job-id>'

local function record(sk, rec)
  local key = sk .. ':runs'
  if redis.call('LPUSH', key, cjson.encode(rec)) > keep then redis.call('LTRIM', key, 0, keep - 1) end
end

local function active(sk)
  local last = redis.call('HGET', sk, 'last_job_id')
  if not last then return nil end
  local st = redis.call('HGET', job_prefix .. last, 'status')
  if st == 'queued' or st == 'started' or st == 'scheduled' or st == 'deferred' then return last, st end
  return nil
end

local function cancel(job_id, st)
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

local function create(id, sk, f, blob, count_lag)
  local jk = job_prefix .. f.job_id
  if redis.call('EXISTS', jk) == 1 then return 0 end
  local args = {}
  for k, v in pairs(f.fields) do args[#args + 1] = k; args[#args + 1] = v end
  args[#args + 1] = 'data'; args[#args + 1] = blob
  redis.call('HSET', jk, unpack(args))
  for _, op in ipairs(f.push) do
    local call = {}
    for n, v in ipairs(op) do if v == JOB_ID then call[n] = f.job_id else call[n] = v end end
    redis.call(unpack(call))
  end
  redis.call('SADD', queues_key, f.queue_key)
  redis.call('HSET', sk, 'last_job_id', f.job_id, 'last_run_at', int(f.due))
  redis.call('HINCRBY', sk, 'runs', 1)
  redis.call('HINCRBY', stats, 'runs', 1)
  local rec = {scheduled_for = f.iso, job_id = f.job_id, status = 'enqueued', enqueued_at = now_iso, kind = f.kind}
  if count_lag then
    local lag = math.max(0, now_ms - f.target)
    rec.lag_ms = lag
    redis.call('HINCRBY', sk, 'lag_sum_ms', int(lag))
    redis.call('HINCRBY', sk, 'lag_count', 1)
    local max = tonumber(redis.call('HGET', sk, 'lag_max_ms') or '0')
    redis.call('HSET', sk, 'lag_last_ms', int(lag), 'lag_max_ms', int(math.max(lag, max)))
    local bucket = 'lag_ms_bucket_inf'
    for _, limit in ipairs(LAG_BUCKETS) do
      if lag <= limit then bucket = 'lag_ms_bucket_' .. limit; break end
    end
    redis.call('HINCRBY', stats, bucket, 1)
    redis.call('HINCRBY', stats, 'lag_ms_sum', int(lag))
    redis.call('HINCRBY', stats, 'lag_count', 1)
  end
  record(sk, rec)
  return 1
end

local function skip(sk, f, status, counter)
  redis.call('HINCRBY', sk, counter, 1)
  redis.call('HINCRBY', stats, counter, 1)
  record(sk, {scheduled_for = f.iso, status = status, recorded_at = now_iso})
end

local function fire_due(h, sk, blobs)
  local created, skipped, dropped = 0, 0, 0
  local finished = false
  for _, r in ipairs(h.records or {}) do skip(sk, r, r.status, r.status) end
  for n, f in ipairs(h.fires or {}) do
    if h['repeat'] and tonumber(redis.call('HGET', sk, 'runs') or '0') >= h['repeat'] then finished = true; break end
    local last, st = active(sk)
    if f.kind == 'buffered' then
      -- A run buffered earlier goes first once its predecessor has ended.
      if not last and redis.call('HGET', sk, 'buffered_due') == int(f.due) then
        redis.call('HDEL', sk, 'buffered_due')
        redis.call('SREM', buffered_key, h.id)
        created = created + create(h.id, sk, f, blobs[n], false)
      end
    elseif last and h.overlap == 'skip' then
      skip(sk, f, 'skipped', 'skipped')
      skipped = skipped + 1
    elseif last and h.overlap == 'buffer_one' then
      if redis.call('HEXISTS', sk, 'buffered_due') == 1 then
        skip(sk, f, 'dropped', 'dropped')
        dropped = dropped + 1
      else
        redis.call('HSET', sk, 'buffered_due', int(f.due))
        redis.call('SADD', buffered_key, h.id)
        record(sk, {scheduled_for = f.iso, status = 'buffered', recorded_at = now_iso})
      end
    else
      if last and h.overlap == 'cancel_other' then cancel(last, st) end
      created = created + create(h.id, sk, f, blobs[n], true)
    end
  end
  if h['repeat'] and tonumber(redis.call('HGET', sk, 'runs') or '0') >= h['repeat'] then finished = true end
  if finished or not h.next_score then
    redis.call('ZREM', due_key, h.id)
    redis.call('HSET', sk, 'next_due', '')
  else
    redis.call('ZADD', due_key, int(h.next_score), h.id)
    redis.call('HSET', sk, 'next_due', int(h.next_due))
  end
  return {created, skipped, dropped}
end

local function fire_entry(h, blobs)
  local sk = prefix .. h.id
  if h.mode == 'due' then
    local score = redis.call('ZSCORE', due_key, h.id)
    if not score or tonumber(score) ~= h.score then return -2 end
    if redis.call('HGET', sk, 'paused') == '1' then redis.call('ZREM', due_key, h.id); return -2 end
    return fire_due(h, sk, blobs)
  end
  if redis.call('EXISTS', sk) == 0 then return -3 end
  if h.mode == 'buffer' then
    if redis.call('HGET', sk, 'buffered_due') ~= int(h.buffered) or active(sk) then return -2 end
    if redis.call('HGET', sk, 'paused') == '1' then return -2 end
    redis.call('HDEL', sk, 'buffered_due')
    redis.call('SREM', buffered_key, h.id)
    return create(h.id, sk, h.fires[1], blobs[1], false)
  end
  local created = {}
  for n, f in ipairs(h.fires) do created[n] = create(h.id, sk, f, blobs[n], false) end
  return created
end

local results = {}
local i = 9
for e = 1, count do
  local h = cjson.decode(ARGV[i]); i = i + 1
  local blobs = {}
  for n = 1, #(h.fires or {}) do blobs[n] = ARGV[i]; i = i + 1 end
  results[e] = fire_entry(h, blobs)
end
return results
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


def report(entry: Entry, result: Any) -> int:
    """Emit the events of an applied entry; return how many run jobs it created."""
    if isinstance(result, list) and entry.mode == "due":
        created, skipped, dropped = (int(n) for n in result)
        for event in ("missed", "coalesced"):
            emit(event, entry.schedule_id, sum(1 for _, status in entry.records if status == event))
        emit("skipped", entry.schedule_id, skipped)
        emit("dropped", entry.schedule_id, dropped)
    else:
        created = max(int(result), 0) if isinstance(result, int) else sum(result)
    emit("fired", entry.schedule_id, created)
    return created


@dataclass
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


def scheduled_for(job: Any = None) -> datetime | None:
    """Return the logical due time of the running scheduled job (or `job`), aware UTC; None if not a run."""
    job = job or get_current_job()
    value = (job.meta or {}).get("scheduled_for") if job is not None else None
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def retry_for(policy: RetryPolicy) -> Retry | None:
    if policy.max <= 0:
        return None
    if isinstance(policy.backoff, str):
        intervals = [min(10 * 2**n, 3600) for n in range(policy.max)]
    else:
        intervals = list(policy.backoff) or [0]
    return Retry(max=policy.max, interval=intervals)


class _Recorder:
    """A stand-in pipeline that records the commands ServiceQueue.push_job_id sends, for Lua to replay."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        if name not in PUSH_COMMANDS:
            raise AttributeError(f"push_job_id used {name!r}, which the fire script does not replay")

        def record(*args: Any) -> None:
            self.commands.append([name.upper(), *(str(a) for a in args)])

        return record


def push_commands(queue: ServiceQueue) -> list[list[str]]:
    """Return the Redis commands `queue` uses to push a job id (the lane, any wake-up), id as a placeholder."""
    recorder = _Recorder()
    queue.push_job_id(JOB_ID_PLACEHOLDER, pipeline=recorder)
    return recorder.commands


class JobTemplates:
    """RQ job hash fields per stored spec, built once with RQ's own Job.to_dict(), then copied per run."""

    def __init__(self, connection: Redis) -> None:
        self.connection = connection
        self._cache: dict[str, tuple[dict[str, str], bytes, str, list[list[str]]]] = {}

    def get(self, spec_json: str) -> tuple[dict[str, str], bytes, str, list[list[str]]]:
        cached = self._cache.get(spec_json)
        if cached is None:
            if len(self._cache) > 200_000:
                self._cache.clear()
            cached = self._cache[spec_json] = self._build(load_spec(spec_json))
        return cached

    def _build(self, spec: ScheduleSpec) -> tuple[dict[str, str], bytes, str, list[list[str]]]:
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
            on_failure=Callback(FAILURE_CALLBACK) if spec.pause_on_failure else None,
        )
        job.origin = queue.name
        fields = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in job.to_dict().items() if k != "data"}
        for name in ("created_at", "enqueued_at", "meta"):
            fields.pop(name, None)
        fields["status"] = "queued"
        fields["origin"] = queue.name
        return fields, job.to_dict()["data"], queue.key, push_commands(queue)

    def fire(
        self, schedule_id: str, spec_json: str, due_ms: int, kind: str, now_rq: str
    ) -> tuple[dict[str, Any], bytes]:
        """Return the Lua description and the data blob of the run of `schedule_id` due at `due_ms`."""
        template, data, queue_key, push = self.get(spec_json)
        iso = isoformat(from_ms(due_ms))
        fields = dict(template)
        fields["created_at"] = fields["enqueued_at"] = now_rq
        fields["meta"] = JSONSerializer.dumps({"schedule_id": schedule_id, "scheduled_for": iso}).decode()
        job_id = run_job_id(schedule_id, due_ms)
        description = {
            "job_id": job_id,
            "due": due_ms,
            "iso": iso,
            "kind": kind,
            "queue_key": queue_key,
            "push": push,
            "fields": fields,
        }
        return description, data


class Firing:
    """Runs batches of Entries through the fire script; the owner token fences a stale leader."""

    def __init__(self, connection: Redis, owner: str = "", lease_key: str = "") -> None:
        self.connection = connection
        self.owner = owner
        self.lease_key = lease_key or "svc:no-lease"
        self.templates = JobTemplates(connection)
        self._script = connection.register_script(FIRE_SCRIPT)

    def run(self, entries: list[Entry], stored: dict[str, StoredSchedule], now: datetime) -> list[Any] | None:
        """Apply `entries` atomically; return per entry the jobs created (<0: not applied), None if the lease is lost.

        A due entry's result is [created, skipped, dropped]; a buffer entry's 1 or 0; a manual entry's
        a list with 1 per run created and 0 per run that already existed.
        """
        if not entries:
            return []
        now_ms = to_ms(now)
        now_rq = utcformat(now.astimezone(UTC).replace(tzinfo=None))
        args: list[Any] = [self.owner, now_ms, isoformat(now), ScheduleKeys.prefix]
        args += [ServiceJob.redis_job_namespace_prefix, RQ_KEY_PREFIX, RUNS_KEPT, len(entries)]
        for entry in entries:
            header, blobs = self._header(entry, stored[entry.schedule_id], now_rq)
            args.append(json.dumps(header, separators=(",", ":")))
            args.extend(blobs)
        keys = [
            self.lease_key,
            ScheduleKeys.due,
            ScheduleKeys.buffered,
            ServiceQueue.redis_queues_keys,
            ScheduleKeys.stats,
        ]
        results = self._script(keys=keys, args=args)
        if results and results[0] == -1 and self.owner:
            return None
        return results

    def _header(self, entry: Entry, stored: StoredSchedule, now_rq: str) -> tuple[dict[str, Any], list[bytes]]:
        fires, blobs = [], []
        for due_ms, kind in entry.fires:
            description, blob = self.templates.fire(entry.schedule_id, stored.spec_json, due_ms, kind, now_rq)
            # The first due time was aimed at its jittered score; lag is measured from there.
            first = entry.first_target is not None and due_ms == entry.first_due
            description["target"] = entry.first_target if first else due_ms
            fires.append(description)
            blobs.append(blob)
        header: dict[str, Any] = {
            "id": entry.schedule_id,
            "mode": entry.mode,
            "fires": fires,
            "overlap": stored.spec.overlap,
        }
        header["records"] = [{"iso": isoformat(from_ms(d)), "status": status} for d, status in entry.records]
        optional = {
            "score": entry.score,
            "next_due": entry.next_due,
            "next_score": entry.next_score,
            "buffered": entry.buffered,
            "repeat": stored.spec.repeat,
        }
        header.update({k: v for k, v in optional.items() if v is not None})
        if not fires:
            header.pop("fires")
        return header, blobs


def jittered(spec: ScheduleSpec, due_ms: int | None) -> int | None:
    """Return the score the due time `due_ms` is fired at: the due time plus 0..jitter seconds."""
    if due_ms is None:
        return None
    return due_ms + (int(random.uniform(0, spec.jitter) * 1000) if spec.jitter else 0)


def plan_due(stored: StoredSchedule, score: int, now: datetime) -> Entry:
    """Return what firing `stored` (due at `score`) at `now` means: runs, missed, coalesced, next due time."""
    spec, now_ms = stored.spec, to_ms(now)
    first = stored.number("next_due") or score
    rule = cron_rule(stored.spec_json)
    dues = [first]
    dues += [to_ms(d) for d in spec.due_times(from_ms(first), now, MAX_CATCHUP - 1)] if spec.at is None else []
    grace_ms = None if spec.misfire_grace_time is None else spec.misfire_grace_time * 1000
    late = {d: now_ms - (score if d == first else d) for d in dues}
    runnable = [d for d in dues if grace_ms is None or late[d] <= grace_ms]
    entry = Entry(stored.id, "due", score=score, first_target=score, first_due=first)
    entry.records = [(d, "missed") for d in dues if d not in runnable]
    if spec.coalesce and len(runnable) > 1:
        entry.records += [(d, "coalesced") for d in runnable[:-1]]
        runnable = runnable[-1:]
    entry.records.sort()
    entry.fires = [(d, "scheduled") for d in runnable]
    buffered = stored.number("buffered_due")
    if spec.overlap == "buffer_one" and buffered is not None:
        entry.fires.insert(0, (buffered, "buffered"))
    following = spec.next_due_after(from_ms(dues[-1]), rule)
    entry.next_due = to_ms(following) if following else None
    entry.next_score = jittered(spec, entry.next_due)
    return entry


def on_run_failed(job: Any, connection: Redis, *exc_info: Any) -> None:
    """RQ failure callback of runs whose schedule has pause_on_failure: pause it once retries are spent."""
    if job.should_retry:
        return
    schedule_id = (job.meta or {}).get("schedule_id")
    if not schedule_id:
        return
    error = str(exc_info[1])[:200] if len(exc_info) > 1 else "failed"
    from service.schedules import pause  # a run's worker imports this module; keep the domain import lazy

    pause(connection, schedule_id, note=f"paused: run {job.id} failed: {error}", missing_ok=True)


def fire_manual(connection: Redis, stored: StoredSchedule, dues_ms: list[int], kind: str, now: datetime) -> list[dict]:
    """Create runs of `stored` for `dues_ms` now (run-now, backfill), each at most once; return what happened."""
    entry = Entry(stored.id, "manual", fires=[(d, kind) for d in dues_ms])
    results = Firing(connection).run([entry], {stored.id: stored}, now)
    created = results[0] if results and isinstance(results[0], list) else [0] * len(dues_ms)
    return [
        {"scheduled_for": isoformat(from_ms(due)), "job_id": run_job_id(stored.id, due), "created": bool(flag)}
        for due, flag in zip(dues_ms, created, strict=True)
    ]
