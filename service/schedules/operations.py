"""Schedules: the domain layer for recurring work (upsert, read, list, pause, run now, preview, backfill).

HTTP views, the CLI, the declared-file sync and Python code (`schedule()`)
all call these functions. Every write validates first and then changes
Redis in one MULTI (or one Lua call), so a rejected request changes nothing,
and every change wakes the scheduler so a new due time is not waited for.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import Redis
from redis.client import Pipeline

from service.core.config import Limits
from service.core.errors import InvalidField, ScheduleLimitReached, ScheduleNotFound
from service.core.keys import ScheduleKeys, job_key
from service.jobs.callbacks import pause_schedule
from service.jobs.context import scheduled_for
from service.schedules.runs import fire_manual, jittered, run_job_id
from service.schedules.spec import (
    LATEST,
    ScheduleSpec,
    check_schedule_id,
    from_ms,
    isoformat,
    parse_instant,
    parse_spec,
    to_ms,
)
from service.schedules.store import COUNTERS, StoredSchedule, dump_spec, from_raw, read, read_many
from service.tasks.registry import REGISTRY

__all__ = ["scheduled_for", "schedule", "upsert", "upsert_many", "get", "list_schedules", "delete", "pause", "resume"]

MAX_PREVIEW = 1000
MAX_BACKFILL = 1000
BACKFILL_CHUNK = 100  # due times per firing call, one progress step; runs are still created at most once
MAX_PAGE = 1000
RUNS_PAGE = 100
ORIGINS = ("api", "file", "code")


def now_utc() -> datetime:
    return datetime.now(UTC)


def upsert(
    connection: Redis,
    schedule_id: str,
    data: Any,
    *,
    origin: str = "api",
    now: datetime | None = None,
    limits: Limits | None = None,
) -> tuple[dict[str, Any], bool]:
    """Create or replace schedule `schedule_id` from `data`; return (its JSON, created?). Same spec: no change.

    `limits`: a client's schedule (API, CLI) is held to them: the task's argument check, and no new
    schedule past MAX_SCHEDULES (ScheduleLimitReached); replacing an existing one is always allowed.
    """
    check_schedule_id(schedule_id)
    if isinstance(data, dict) and "id" in data and data["id"] != schedule_id:
        raise InvalidField("id", f"{data['id']!r} differs from the id in the path {schedule_id!r}")
    spec = parse_spec(data)
    if limits is None:
        return save(connection, schedule_id, spec, origin=origin, now=now)
    REGISTRY.get(spec.task).check_request(spec.args, spec.kwargs, limits)
    return save(connection, schedule_id, spec, origin=origin, now=now, max_schedules=limits.schedules)


def save(
    connection: Redis,
    schedule_id: str,
    spec: ScheduleSpec,
    *,
    origin: str = "api",
    now: datetime | None = None,
    paused: bool | None = None,
    max_schedules: int | None = None,
) -> tuple[dict[str, Any], bool]:
    """Store a validated spec under `schedule_id` (see upsert).

    `paused`: None keeps the current state unless the spec sets `paused`
    explicitly, so a re-synced file or a redeploy does not resume a schedule
    an operator paused. `max_schedules`: refuse a new id once the index holds
    that many (read while WATCHing the index, so concurrent creations cannot pass it).
    """
    now = now or now_utc()
    if spec.queue is None:
        spec = spec.model_copy(update={"queue": spec.lane})  # echo the lane it will run in
    spec_json = dump_spec(spec)
    key = ScheduleKeys.schedule(schedule_id)
    watched = (key, ScheduleKeys.index) if max_schedules is not None else (key,)

    def write_if_changed(pipe: Pipeline) -> tuple[StoredSchedule | None, bool]:
        """Inside WATCH: read the schedule; unchanged: return it; else MULTI, write it, return (None, created?)."""
        current = from_raw(schedule_id, pipe.hgetall(key))
        wanted = _paused(spec, current, paused)
        if current is not None and current.spec_json == spec_json and current.paused == wanted:
            pipe.unwatch()
            return current, False
        if current is None and max_schedules is not None and pipe.zcard(ScheduleKeys.index) >= max_schedules:
            pipe.unwatch()
            raise ScheduleLimitReached(
                f"{max_schedules} schedules exist (MAX_SCHEDULES): delete one or replace an existing id"
            )
        pipe.multi()
        _write(pipe, schedule_id, spec, spec_json, current, wanted, origin, now)
        return None, current is None

    # A concurrent change to the schedule (or, with a cap, to the index) between the read and EXEC runs it again.
    unchanged, created = connection.transaction(write_if_changed, *watched, value_from_callable=True)
    if unchanged is not None:
        return describe(unchanged), False
    stored = read(connection, schedule_id)
    assert stored is not None
    return describe(stored), created


def upsert_many(
    connection: Redis, items: dict[str, Any], *, origin: str = "api", now: datetime | None = None, chunk: int = 1000
) -> dict[str, int]:
    """Create or replace many schedules (e.g. one per user) with pipelined writes; return counts.

    Every item is validated before anything is written (InvalidField names
    the schedule id and the field). Each chunk is read in one round trip and
    written in one MULTI; unchanged schedules are not written. Unlike
    upsert(), a concurrent change to the same id between the read and the
    write of its chunk is overwritten (last writer wins).
    """
    now = now or now_utc()
    specs: dict[str, ScheduleSpec] = {}
    for schedule_id, data in items.items():
        try:
            spec = parse_spec(data)
            check_schedule_id(schedule_id)
        except InvalidField as exc:
            raise InvalidField(f"{str(schedule_id)[:100]}.{exc.field}", exc.message.split(": ", 1)[-1]) from None
        specs[schedule_id] = spec if spec.queue else spec.model_copy(update={"queue": spec.lane})
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    ids = list(specs)
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        current = dict(zip(part, read_many(connection, part), strict=True))
        pipe = connection.pipeline()
        for schedule_id in part:
            spec, existing = specs[schedule_id], current[schedule_id]
            spec_json, paused = dump_spec(spec), _paused(spec, existing, None)
            if existing is not None and existing.spec_json == spec_json and existing.paused == paused:
                counts["unchanged"] += 1
                continue
            counts["created" if existing is None else "updated"] += 1
            _write(pipe, schedule_id, spec, spec_json, existing, paused, origin, now, wake=False)
        pipe.publish(ScheduleKeys.wakeup, "*")
        pipe.execute()
    return counts


def _paused(spec: ScheduleSpec, current: StoredSchedule | None, paused: bool | None) -> bool:
    if paused is not None:
        return paused
    if current is None or "paused" in spec.model_fields_set:
        return spec.paused
    return current.paused


def _write(
    pipe: Any,
    schedule_id: str,
    spec: ScheduleSpec,
    spec_json: str,
    current: StoredSchedule | None,
    paused: bool,
    origin: str,
    now: datetime,
    wake: bool = True,
) -> None:
    key = ScheduleKeys.schedule(schedule_id)
    next_due = None if paused else _first_due(spec, current, now)
    fields: dict[str, Any] = {
        "spec": spec_json,
        "paused": "1" if paused else "0",
        "updated_at": isoformat(now),
        "next_due": "" if next_due is None else next_due,
    }
    if current is None:
        fields.update({name: 0 for name in COUNTERS}, created_at=isoformat(now), origin=origin, note="")
    elif current.state.get("origin") == "file" and origin != "file":
        fields["origin"] = origin  # claimed by the API or code: the file sync will no longer remove it
    if not paused:
        fields["note"] = ""
    pipe.hset(key, mapping=fields)
    pipe.zadd(ScheduleKeys.index, {schedule_id: 0})
    if next_due is None:
        pipe.zrem(ScheduleKeys.due, schedule_id)
    else:
        pipe.zadd(ScheduleKeys.due, {schedule_id: jittered(spec, next_due)})
    if wake:
        pipe.publish(ScheduleKeys.wakeup, schedule_id)


def _first_due(spec: ScheduleSpec, current: StoredSchedule | None, now: datetime) -> int | None:
    if spec.at is not None:
        # A one-shot in the past still fires once (misfire_grace_time permitting), unless it already ran.
        at = to_ms(parse_instant(spec.at, "at"))
        already = current is not None and current.number("last_run_at") == at
        return None if already else at
    following = spec.next_due_after(now)
    return to_ms(following) if following else None


def schedule(
    schedule_id: str, task: str, *, connection: Redis, args: list | tuple = (), **options: Any
) -> dict[str, Any]:
    """Create or replace a schedule from code: `schedule("nightly", "reports.generate", cron="0 3 * * *")`."""
    data = {"task": task, "args": list(args), **options}
    return upsert(connection, schedule_id, data, origin="code")[0]


def load(connection: Redis, schedule_id: str) -> StoredSchedule:
    """Return the stored schedule `schedule_id`; raise ScheduleNotFound otherwise."""
    stored = read(connection, schedule_id) if _valid_id(schedule_id) else None
    if stored is None:
        raise ScheduleNotFound(f"no schedule with id {schedule_id[:100]!r}")
    return stored


def _valid_id(schedule_id: str) -> bool:
    try:
        check_schedule_id(schedule_id)
    except InvalidField:
        return False
    return True


def get(connection: Redis, schedule_id: str) -> dict[str, Any]:
    """Return the JSON of schedule `schedule_id`."""
    return describe(load(connection, schedule_id))


def describe(stored: StoredSchedule) -> dict[str, Any]:
    """Return a schedule's JSON: its spec fields, then id, paused, next/last run, note and counters."""
    data = json.loads(stored.spec_json)
    state = stored.state
    next_due, last_run = stored.number("next_due"), stored.number("last_run_at")
    lag_count = stored.number("lag_count") or 0
    data.update(
        id=stored.id,
        paused=stored.paused,
        note=state.get("note") or None,
        next_run_at=isoformat(from_ms(next_due)) if next_due is not None else None,
        last_run_at=isoformat(from_ms(last_run)) if last_run is not None else None,
        last_job_id=state.get("last_job_id"),
        origin=state.get("origin", "api"),
        created_at=state.get("created_at"),
        updated_at=state.get("updated_at"),
        counters={name: stored.number(name) or 0 for name in COUNTERS},
        lag_ms={
            "last": stored.number("lag_last_ms"),
            "max": stored.number("lag_max_ms"),
            "mean": round((stored.number("lag_sum_ms") or 0) / lag_count) if lag_count else None,
        },
    )
    buffered = stored.number("buffered_due")
    data["buffered_run_for"] = isoformat(from_ms(buffered)) if buffered is not None else None
    return data


def list_schedules(
    connection: Redis, cursor: str | None = None, limit: int = 100, *, max_page: int = MAX_PAGE
) -> dict[str, Any]:
    """Return one page of schedules in id order and the cursor of the next page (None at the end)."""
    if not 1 <= limit <= max_page:
        raise InvalidField("limit", f"must be 1 to {max_page}")
    if cursor and not _valid_id(cursor):
        raise InvalidField("cursor", "not a cursor this API returned")
    start = f"({cursor}" if cursor else "-"
    ids = [i.decode() for i in connection.zrangebylex(ScheduleKeys.index, start, "+", start=0, num=limit + 1)]
    page, more = ids[:limit], len(ids) > limit
    found = [describe(s) for s in read_many(connection, page) if s is not None]
    return {"schedules": found, "next_cursor": page[-1] if more and page else None}


def delete(connection: Redis, schedule_id: str) -> None:
    """Remove schedule `schedule_id` and its run history (its runs' jobs stay); ScheduleNotFound if absent."""
    load(connection, schedule_id)
    pipe = connection.pipeline()
    pipe.delete(ScheduleKeys.schedule(schedule_id), ScheduleKeys.runs(schedule_id))
    pipe.zrem(ScheduleKeys.index, schedule_id)
    pipe.zrem(ScheduleKeys.due, schedule_id)
    pipe.srem(ScheduleKeys.buffered, schedule_id)
    pipe.publish(ScheduleKeys.wakeup, schedule_id)
    pipe.execute()


def pause(connection: Redis, schedule_id: str, note: str = "", *, missing_ok: bool = False) -> dict[str, Any] | None:
    """Pause schedule `schedule_id` with an optional note: nothing fires until it is resumed."""
    if note is not None and (not isinstance(note, str) or len(note) > 1000):
        raise InvalidField("note", "must be a string of at most 1000 characters")
    if not _valid_id(schedule_id) or not pause_schedule(connection, schedule_id, note or ""):
        if missing_ok:
            return None
        raise ScheduleNotFound(f"no schedule with id {schedule_id[:100]!r}")
    return get(connection, schedule_id)


def resume(connection: Redis, schedule_id: str, now: datetime | None = None) -> dict[str, Any]:
    """Resume a paused schedule from its next due time after now (times passed while paused do not fire)."""
    stored = load(connection, schedule_id)
    if not stored.paused:
        return describe(stored)
    return save(connection, schedule_id, stored.spec, origin=stored.state.get("origin", "api"), now=now, paused=False)[
        0
    ]


def run_now(connection: Redis, schedule_id: str, now: datetime | None = None) -> dict[str, Any]:
    """Enqueue one run of the schedule now (even if paused; overlap policy not applied); return the job."""
    from service.jobs.describe import describe as describe_job
    from service.jobs.operations import fetch

    stored = load(connection, schedule_id)
    now = (now or now_utc()).replace(microsecond=0)
    fire_manual(connection, stored, [to_ms(now)], "manual", now)
    return describe_job(fetch(connection, run_job_id(schedule_id, to_ms(now))))


def backfill(
    connection: Redis,
    schedule_id: str,
    data: Any,
    now: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Enqueue one run per due time in the past range [from, to]; runs that exist already are not repeated.

    Fired BACKFILL_CHUNK due times per script call, `progress(done, total)` after each.
    """
    stored = load(connection, schedule_id)
    now = now or now_utc()
    if not isinstance(data, dict) or set(data) - {"from", "to"}:
        raise InvalidField("body", 'send {"from": <ISO 8601>, "to": <ISO 8601>} and nothing else')
    begin, end = (_instant_field(data, name) for name in ("from", "to"))
    if end <= begin:
        raise InvalidField("to", "must be after from")
    if end > now:
        raise InvalidField("to", "must not be in the future: backfill fills past due times")
    unbounded = stored.spec.model_copy(update={"start_at": None, "end_at": None})
    dues = unbounded.due_times(begin - timedelta(microseconds=1), end, MAX_BACKFILL + 1)
    if len(dues) > MAX_BACKFILL:
        raise InvalidField("to", f"the range holds more than {MAX_BACKFILL} due times; backfill it in parts")
    dues_ms, runs = [to_ms(d) for d in dues], []
    for start in range(0, len(dues_ms), BACKFILL_CHUNK):
        runs += fire_manual(connection, stored, dues_ms[start : start + BACKFILL_CHUNK], "backfill", now)
        if progress:
            progress(len(runs), len(dues_ms))
    return {"runs": runs, "created": sum(1 for r in runs if r["created"])}


def _instant_field(data: dict, name: str) -> datetime:
    value = data.get(name)
    if not isinstance(value, str):
        raise InvalidField(name, "required: an ISO 8601 date-time with offset")
    return parse_instant(value, name)


def runs(connection: Redis, schedule_id: str, limit: int = 50) -> dict[str, Any]:
    """Return the schedule's recent runs, newest first, with each run job's current status."""
    load(connection, schedule_id)
    if not 1 <= limit <= RUNS_PAGE:
        raise InvalidField("limit", f"must be 1 to {RUNS_PAGE}")
    records = [json.loads(r) for r in connection.lrange(ScheduleKeys.runs(schedule_id), 0, limit - 1)]
    pipe = connection.pipeline(transaction=False)
    for record in records:
        pipe.hget(job_key(record.get("job_id", "")), "status")
    for record, status in zip(records, pipe.execute(), strict=True):
        record.setdefault("job_id", None)
        if record["status"] == "enqueued":
            record["status"] = status.decode() if status else "expired"
    return {"runs": records, "next_cursor": None}


def preview(spec: ScheduleSpec, count: int = 10, now: datetime | None = None) -> dict[str, Any]:
    """Return the next `count` due times of `spec` after now, in UTC and in its zone."""
    if not isinstance(count, int) or not 1 <= count <= MAX_PREVIEW:
        raise InvalidField("count", f"must be a whole number from 1 to {MAX_PREVIEW}")
    from service.schedules.cron import load_zone

    zone = load_zone(spec.timezone)
    dues = spec.due_times(now or now_utc(), LATEST, count)
    times = [{"utc": isoformat(d), "local": d.astimezone(zone).isoformat()} for d in dues]
    return {"timezone": spec.timezone, "times": times}


def preview_saved(connection: Redis, schedule_id: str, count: int = 10, now: datetime | None = None) -> dict[str, Any]:
    """Return the preview of a stored schedule (see preview)."""
    stored = load(connection, schedule_id)
    return {"id": schedule_id, **preview(stored.spec, count, now)}


def preview_body(data: Any, count: int = 10, now: datetime | None = None) -> dict[str, Any]:
    """Return the preview of an unsaved schedule body (validated like PUT)."""
    return preview(parse_spec(data), count, now)
