"""Schedules: the domain layer for recurring work (upsert, read, list, pause, run now, preview, backfill).

HTTP views, the CLI, the declared-file sync and Python code (`schedule()`)
all call these functions. Every write validates first and then changes
Redis in one Lua call (or one MULTI), so a rejected request changes nothing,
and a change that may bring the next due time forward wakes the scheduler so
it is not waited for (a PUT: one due before every other).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import ResponseError, WatchError

from service.core import clock
from service.core.clock import EPOCH, server_now
from service.core.config import Limits
from service.core.errors import InvalidField, ScheduleDamaged, ScheduleLimitReached, ScheduleNotFound
from service.core.keys import CalendarKeys, ScheduleKeys, job_key
from service.core.lua import script
from service.jobs.callbacks import pause_schedule
from service.jobs.context import scheduled_for
from service.ops.audit import RideAlong
from service.schedules import calendars
from service.schedules.calendars import CALENDARS, skip_key
from service.schedules.migrate import migrate
from service.schedules.runs import fire_manual, jittered, next_run, run_job_id
from service.schedules.spec import (
    LATEST,
    ScheduleSpec,
    SkipDates,
    check_schedule_id,
    from_ms,
    isoformat,
    parse_instant,
    parse_spec,
    to_ms,
)
from service.schedules.store import (
    COUNTERS,
    FIELDS,
    LEGACY,
    StoredSchedule,
    decode,
    decode_record,
    from_raw,
    id_page,
    join_spec,
    read,
    read_many,
    read_with_values,
    record_fields,
    refuse_planted,
    split_spec,
    template_id,
    templates,
)
from service.tasks.registry import REGISTRY

RELEASE = script("release_template")
__all__ = ["scheduled_for", "schedule", "upsert", "upsert_many", "get", "list_schedules", "delete", "pause", "resume"]

MAX_PREVIEW = 1000
MAX_BACKFILL = 1000
BACKFILL_CHUNK = 100  # due times per firing call, one progress step; runs are still created at most once
MAX_PAGE = 1000
RUNS_PAGE = 100
ORIGINS = ("api", "file", "code")


def upsert(
    connection: Redis,
    schedule_id: str,
    data: Any,
    *,
    origin: str = "api",
    now: datetime | None = None,
    limits: Limits | None = None,
    audit: RideAlong | None = None,
) -> tuple[dict[str, Any], bool]:
    """Create or replace schedule `schedule_id` from `data`; return (its JSON, created?). Same spec: no change.

    `limits`: a client's schedule (API, CLI) is held to them: the task's argument check, and no new
    schedule past MAX_SCHEDULES (ScheduleLimitReached); replacing an existing one is always allowed.
    `audit`: the request's audit event, recorded by the write itself (status 201 or 200); an unchanged
    schedule writes nothing and leaves it unrecorded (audit.recorded False) for its caller to record.
    """
    spec = validated(schedule_id, data, limits)
    cap = limits.schedules if limits is not None else None
    return save(connection, schedule_id, spec, origin=origin, now=now, max_schedules=cap, audit=audit)


def validated(schedule_id: str, data: Any, limits: Limits | None = None) -> ScheduleSpec:
    """`data` checked as the spec of `schedule_id` (and against `limits`: see upsert); InvalidField otherwise."""
    check_schedule_id(schedule_id)
    if isinstance(data, dict) and "id" in data and data["id"] != schedule_id:
        raise InvalidField("id", f"{data['id']!r} differs from the id in the path {schedule_id!r}")
    spec = parse_spec(data)
    if limits is not None:
        REGISTRY.get(spec.task).check_request(spec.args, spec.kwargs, limits)
    return spec


def save(
    connection: Redis,
    schedule_id: str,
    spec: ScheduleSpec,
    *,
    origin: str = "api",
    now: datetime | None = None,
    paused: bool | None = None,
    max_schedules: int | None = None,
    audit: RideAlong | None = None,
) -> tuple[dict[str, Any], bool]:
    """Store a validated spec under `schedule_id` (see upsert).

    `paused`: None keeps the current state unless the spec sets `paused`
    explicitly, so a re-synced file or a redeploy does not resume a schedule
    an operator paused. `max_schedules`: refuse a new id once the index holds
    that many (counted by the writing script, so concurrent creations cannot pass it).

    One round trip when the write can be planned before reading (see _guessed_write): put_schedule.lua
    turns a new schedule's plan into a replacement of the stored one. Otherwise, or when what is stored
    is not what that plan assumes, two: Redis's clock, the schedule and its template (read_schedule.lua,
    or the first script's answer), then put_schedule.lua writing only if the schedule is still as read
    (else this reads again); it checks the cap and the calendars it names, and answers the hash as written.
    """
    if spec.queue is None:
        spec = spec.model_copy(update={"queue": spec.lane})  # echo the lane it will run in
    split = split_spec(spec)
    spec_json = join_spec(*split)
    read = None
    if now is None and paused is None and spec.at is None and origin != "file":
        answer, read = _guessed_write(connection, schedule_id, spec, split, origin, max_schedules, audit)
        if answer is not None:
            return answer
    while True:
        read = read or _read_for_write(connection, schedule_id, now)
        if read is None:
            continue
        (at, seen, current), read = read, None
        wanted = _paused(spec, current, paused)
        if current is not None and current.spec_json == spec_json and current.paused == wanted:
            return describe_all(connection, [current])[0], False
        write = _planned_write(schedule_id, spec, split, current, wanted, origin, at)
        event = audit.script_args(201 if current is None else 200) if audit is not None else None
        reply = _write_if_unchanged(connection, [write], [seen], max_schedules, answer=True, event=event)
        if reply is not None:
            if audit is not None and event is not None:
                audit.written(event)
            raw = decode(dict(zip(FIELDS, reply, strict=True)))
            stored = from_raw(schedule_id, raw, {write["set"]["t"]: split[0]})
            assert stored is not None
            return describe_all(connection, [stored])[0], current is None


Read = tuple[datetime, list[bytes | None], StoredSchedule | None]


def _guessed_write(
    connection: Redis,
    schedule_id: str,
    spec: ScheduleSpec,
    split: tuple[str, str],
    origin: str,
    max_schedules: int | None,
    audit: RideAlong | None,
) -> tuple[tuple[dict[str, Any], bool] | None, Read | None]:
    """Write `spec` in one round trip, planned before reading: (save()'s answer (JSON, created?), None).

    The plan is a new schedule's, due from this process's estimate of Redis's clock (clock.utcnow);
    put_schedule.lua makes it a replacement when the schedule exists, keeping its run state, pause and
    origin. When the stored record is one this plan does not fit (paused and the spec says nothing of
    it, owned by the file, in another calendar set, damaged, or the estimate is off by over 25 ms) it
    writes nothing and answers (None, the read save() plans from), or (None, None) to read again.
    """
    template, call = split
    sent_at = time.time()
    at = clock.utcnow()
    wanted = spec.paused  # a new schedule's; a stored pause the spec says nothing of is left to the slow path
    fields, next_due = _fields(spec, template, call, None, wanted, origin, at)
    fields.pop("c")  # the script's clock, when new
    owner = fields.pop("o")
    guess: dict[str, Any] = {"now": str(to_ms(at)), "calendars": sorted(set(spec.skip_calendars))}
    guess["if_new"] = {"o": owner} if owner is not None else {}
    if "paused" in spec.model_fields_set:
        guess["paused"] = "1" if spec.paused else "0"
    write: dict[str, Any] = {
        "id": schedule_id,
        "new": True,
        "clean": True,
        "calendars": guess["calendars"],
        "set": {name: str(value) for name, value in fields.items() if value not in (None, "")},
        "del": [name for name, value in fields.items() if value in (None, "")],
        "cal_add": [],
        "cal_del": [],
        "template": [fields["t"], template],
        "guess": guess,
    }
    if next_due is not None:
        write["due"] = str(jittered(spec, next_due))
    event = audit.script_args(201) if audit is not None else None
    if event is not None:
        guess["status_at"] = event["fields"][::2].index("status") * 2 + 2  # Lua's index of its value
    reply = _put(connection, [write], [], max_schedules, answer=True, event=event)
    status = reply[0]
    if status not in (b"ok", b"read", b"same"):  # a calendar made meanwhile: plan again from a read
        return None, None
    seconds, micros = (int(x) for x in (reply[-2:] if status == b"ok" else reply[1:3]))  # Redis's TIME
    clock.learn(seconds + micros / 1e6, sent_at)
    if status == b"read":
        at = EPOCH + timedelta(seconds=seconds, microseconds=micros)
        return None, _as_read(connection, schedule_id, at, reply[3], reply[4:])
    known = {fields["t"]: template}
    if status == b"same":
        current = from_raw(schedule_id, decode(dict(zip(FIELDS, reply[3:], strict=True))), known)
        assert current is not None  # its fields were checked by the script
        return (describe_all(connection, [current])[0], False), None
    created = reply[-3] == b"1"
    if audit is not None and event is not None:
        event["fields"][guess["status_at"] - 1] = "201" if created else "200"
        audit.written(event)
    stored = from_raw(schedule_id, decode(dict(zip(FIELDS, reply[2:-3], strict=True))), known)
    assert stored is not None
    return (describe_all(connection, [stored])[0], created), None


def _read_for_write(connection: Redis, schedule_id: str, now: datetime | None) -> Read | None:
    """One round trip (read_schedule.lua): (`now` or Redis's clock, the FIELDS as stored, the schedule or None
    when absent or unreadable); None when it was in the first release's layout and has just been migrated."""
    keys = [ScheduleKeys.schedule(schedule_id), ScheduleKeys.templates]
    seconds, micros, template, *seen = READ(keys=keys, args=FIELDS, client=connection)
    at = now or EPOCH + timedelta(seconds=int(seconds), microseconds=int(micros))
    return _as_read(connection, schedule_id, at, template, seen)


def _as_read(
    connection: Redis, schedule_id: str, at: datetime, template: bytes | None, seen: list[bytes | None]
) -> Read | None:
    """The read of a schedule (read_schedule.lua's answer) as save() plans from it."""
    raw = decode(dict(zip(FIELDS, seen, strict=True)))
    if LEGACY in raw:  # migrated before anything writes it
        migrate(connection, schedule_id)
        return None
    known = {raw["t"]: template.decode(errors="replace")} if template else {}
    return at, seen, from_raw(schedule_id, raw, known)


def _write_if_unchanged(
    connection: Redis,
    writes: list[dict[str, Any]],
    seen: list[list[bytes | None]],
    max_schedules: int | None = None,
    *,
    answer: bool = False,
    event: dict[str, Any] | None = None,
) -> list[bytes | None] | None:
    """Run put_schedule.lua: all of `writes` or none; None when a schedule changed since its `seen` was read.

    Returns the (only) write's FIELDS as written with `answer`, else []. Raises ScheduleLimitReached past
    `max_schedules` (new ids only), InvalidField for a calendar that does not exist. `event`: an audit
    event the script records with the writes (RideAlong.script_args).
    """
    reply = _put(connection, writes, seen, max_schedules, answer=answer, event=event)
    return reply[2:] if reply[0] == b"ok" else None


def _put(
    connection: Redis,
    writes: list[dict[str, Any]],
    seen: list[list[bytes | None]],
    max_schedules: int | None,
    *,
    answer: bool,
    event: dict[str, Any] | None,
) -> list[Any]:
    """Run put_schedule.lua and answer its reply; raise for the cap and a missing calendar (see above)."""
    head: dict[str, Any] = {"fields": FIELDS, "wake": ScheduleKeys.wakeup, "answer": answer}
    if event is not None:
        head["audit"] = event
    head["calendars"] = sorted({c for write in writes for c in write["calendars"]})
    head["writes"] = [{k: v for k, v in write.items() if k != "calendars"} for write in writes]
    if max_schedules is not None:
        head["cap"] = str(max_schedules)
    args = [json.dumps(head, separators=(",", ":"))]
    args += [b"" if v is None else b"=" + v for values in seen for v in values]
    keys = [*PUT_KEYS, *(ScheduleKeys.schedule(write["id"]) for write in writes)]
    reply: list[Any] = PUT(keys=keys, args=args, client=connection)
    status = reply[0]
    if status == b"cap":
        raise ScheduleLimitReached(
            f"{max_schedules} schedules exist (MAX_SCHEDULES): delete one or replace an existing id"
        )
    if status == b"calendar":  # names it, unless it was created meanwhile (then write again)
        calendars.check_exist(connection, [reply[1].decode()])
    return reply


# The shared keys a delete touches besides the schedule's own hash, with their types.
SHARED_KINDS = {
    ScheduleKeys.templates: "hash",
    ScheduleKeys.index: "zset",
    ScheduleKeys.due: "zset",
    ScheduleKeys.buffered: "set",
    ScheduleKeys.template_refs: "hash",
    CalendarKeys.refs: "hash",
}
READ = script("read_schedule")
PUT = script("put_schedule")
PUT_KEYS = [  # before the schedules' own hashes
    ScheduleKeys.index,
    ScheduleKeys.due,
    ScheduleKeys.templates,
    ScheduleKeys.template_refs,
    CalendarKeys.index,
    CalendarKeys.refs,
]


def upsert_many(
    connection: Redis, items: dict[str, Any], *, origin: str = "api", now: datetime | None = None, chunk: int = 200
) -> dict[str, int]:
    """Create or replace many schedules (e.g. one per user), `chunk` per script call; return counts.

    Every item is validated before anything is written (InvalidField names
    the schedule id and the field), and the calendars the items name are
    checked to exist. Each chunk is read in one round trip and written by
    put_schedule.lua, as a PUT is: all of it or none, only if no schedule of
    it changed since it was read (else it is read again); unchanged
    schedules are not written.
    """
    now = now or server_now(connection)
    specs: dict[str, ScheduleSpec] = {}
    for schedule_id, data in items.items():
        try:
            spec = parse_spec(data)
            check_schedule_id(schedule_id)
        except InvalidField as exc:
            raise InvalidField(f"{str(schedule_id)[:100]}.{exc.field}", exc.message.split(": ", 1)[-1]) from None
        specs[schedule_id] = spec if spec.queue else spec.model_copy(update={"queue": spec.lane})
    calendars.check_exist(connection, (c for spec in specs.values() for c in spec.skip_calendars))
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    ids = list(specs)
    for start in range(0, len(ids), chunk):
        part = {schedule_id: specs[schedule_id] for schedule_id in ids[start : start + chunk]}
        for name, n in _write_chunk(connection, part, origin, now).items():
            counts[name] += n
    return counts


def _write_chunk(connection: Redis, specs: dict[str, ScheduleSpec], origin: str, now: datetime) -> Counter[str]:
    """Write a chunk of upsert_many in one put_schedule.lua call, read again while a schedule changes meanwhile."""
    while True:
        seen, current = read_with_values(connection, list(specs))
        legacy = [i for i, stored in zip(specs, current, strict=True) if stored is not None and stored.legacy]
        if legacy:  # migrated before anything writes them, then read again
            for schedule_id in legacy:
                migrate(connection, schedule_id)
            continue
        counts: Counter[str] = Counter()
        writes, values = [], []
        for (schedule_id, spec), existing, as_read in zip(specs.items(), current, seen, strict=True):
            split, paused = split_spec(spec), _paused(spec, existing, None)
            if existing is not None and existing.spec_json == join_spec(*split) and existing.paused == paused:
                counts["unchanged"] += 1
                continue
            counts["created" if existing is None else "updated"] += 1
            writes.append(_planned_write(schedule_id, spec, split, existing, paused, origin, now))
            values.append(as_read)
        if not writes or _write_if_unchanged(connection, writes, values) is not None:
            return counts


def _paused(spec: ScheduleSpec, current: StoredSchedule | None, paused: bool | None) -> bool:
    if paused is not None:
        return paused
    if current is None or "paused" in spec.model_fields_set:
        return spec.paused
    return current.paused


def _current(connection: Redis, pipe: Pipeline, schedule_id: str) -> StoredSchedule | None:
    """Inside WATCH: the schedule as stored (None for a key of another type, planted); one in the first release's
    layout is migrated and the write restarts."""
    try:
        values = pipe.hmget(ScheduleKeys.schedule(schedule_id), FIELDS)
    except ResponseError as exc:
        if not str(exc).startswith("WRONGTYPE"):
            raise
        return None
    raw = decode(dict(zip(FIELDS, values, strict=True)))
    if LEGACY in raw:
        pipe.unwatch()
        migrate(connection, schedule_id)
        raise WatchError("migrated from the first release's layout: read it again")
    return from_raw(schedule_id, raw, templates(connection, {raw.get("t", "")}))


def _fields(
    spec: ScheduleSpec,
    template: str,
    call: str,
    current: StoredSchedule | None,
    paused: bool,
    origin: str,
    now: datetime,
) -> tuple[dict[str, Any], int | None]:
    """The hash fields a write of `spec` sets (None or "": removes them) and its first due time.

    Its run state stays; a new schedule, or a record that could not be read, is written from a clean hash.
    """
    next_due = None if paused else _first_due(spec, current, now)
    fields = {"t": template_id(template), "u": to_ms(now), "a": call, "n": next_due, "p": "1" if paused else None}
    if not paused:
        fields["m"] = None  # the pause note goes with the pause
    if current is None:
        fields.update(c=to_ms(now), o=None if origin == "api" else origin)
    elif current.origin == "file" and origin != "file":  # claimed by the API or code: the file sync leaves it
        fields["o"] = None if origin == "api" else origin
    return fields, next_due


def _planned_write(
    schedule_id: str,
    spec: ScheduleSpec,
    split: tuple[str, str],
    current: StoredSchedule | None,
    paused: bool,
    origin: str,
    now: datetime,
) -> dict[str, Any]:
    """The write of one schedule as put_schedule.lua takes it (one of its `writes`)."""
    template, call = split
    fields, next_due = _fields(spec, template, call, current, paused, origin, now)
    before = set(current.spec.skip_calendars) if current is not None else set()
    after = set(spec.skip_calendars)
    write: dict[str, Any] = {
        "id": schedule_id,
        "new": current is None,
        "calendars": sorted(after),
        "clean": current is None,
        "set": {name: str(value) for name, value in fields.items() if value not in (None, "")},
        "del": [name for name, value in fields.items() if value in (None, "")] if current is not None else [],
        "cal_add": sorted(after - before),
        "cal_del": sorted(before - after),
    }
    previous = current.fields.get("t") if current is not None else None
    if previous != fields["t"]:  # templates are stored once and counted; the last user out deletes one
        write["template"] = [fields["t"], template]
        if previous is not None:
            write["release"] = previous
    if next_due is not None:
        write["due"] = str(jittered(spec, next_due))
    return write


def _first_due(spec: ScheduleSpec, current: StoredSchedule | None, now: datetime) -> int | None:
    if spec.at is not None:
        # A one-shot in the past still fires once (misfire_grace_time permitting), unless it already ran.
        at = to_ms(parse_instant(spec.at, "at"))
        already = current is not None and current.state.last_run_at == at
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
        if _valid_id(schedule_id) and connection.exists(ScheduleKeys.schedule(schedule_id)):
            raise ScheduleDamaged(
                f"schedule {schedule_id!r} is stored in a shape the service cannot read: PUT it again or DELETE it"
            )
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
    return describe_all(connection, [load(connection, schedule_id)])[0]


def describe_all(connection: Redis, stored: list[StoredSchedule]) -> list[dict[str, Any]]:
    """Return the JSON of each schedule, their calendars read once for all."""
    skips = CALENDARS.skips(connection, [s.spec for s in stored])
    return [describe(s, skips.get(skip_key(s.spec))) for s in stored]


def describe(stored: StoredSchedule, skip: SkipDates | None = None) -> dict[str, Any]:
    """Return a schedule's JSON: its spec fields, then id, paused, next/last run, note and counters.

    `next_run_at` is the next due time that will fire: past the dates `skip` names.
    """
    data = json.loads(stored.spec_json)
    state = stored.state
    next_due, last_run = next_run(stored, skip), state.last_run_at

    def iso(ms: int | None) -> str | None:
        return isoformat(from_ms(ms)) if ms is not None else None

    data.update(
        id=stored.id,
        paused=stored.paused,
        note=stored.fields.get("m") or None,
        next_run_at=iso(next_due),
        last_run_at=iso(last_run),
        last_job_id=run_job_id(stored.id, last_run) if last_run is not None else None,
        origin=stored.origin,
        created_at=iso(stored.number("c")),
        updated_at=iso(stored.number("u")),
        counters={name: getattr(state, name) for name in COUNTERS},
        lag_ms={
            "last": state.lag_last_ms,
            "max": state.lag_max_ms,
            "mean": round(state.lag_sum_ms / state.lag_count) if state.lag_count else None,
        },
        buffered_run_for=iso(stored.buffered_due),
    )
    return data


def list_schedules(
    connection: Redis, cursor: str | None = None, limit: int = 100, *, max_page: int = MAX_PAGE
) -> dict[str, Any]:
    """Return one page of schedules in id order and the cursor of the next page (None at the end)."""
    page, next_cursor = id_page(connection, ScheduleKeys.index, cursor, limit, max_page)
    found = describe_all(connection, [s for s in read_many(connection, page) if s is not None])
    return {"schedules": found, "next_cursor": next_cursor}


def delete(connection: Redis, schedule_id: str) -> None:
    """Remove schedule `schedule_id` and its run history (its runs' jobs stay); ScheduleNotFound if absent."""
    key = ScheduleKeys.schedule(schedule_id)
    try:
        load(connection, schedule_id)
    except ScheduleDamaged:  # deleting is how an unreadable record goes
        pass

    def remove(pipe: Pipeline) -> None:
        current = _current(connection, pipe, schedule_id)
        refuse_planted(connection, SHARED_KINDS)
        pipe.multi()
        pipe.delete(key)
        pipe.zrem(ScheduleKeys.index, schedule_id)
        pipe.zrem(ScheduleKeys.due, schedule_id)
        pipe.srem(ScheduleKeys.buffered, schedule_id)
        pipe.publish(ScheduleKeys.wakeup, schedule_id)
        if current is not None:
            calendars.count_refs(pipe, current.spec, None)
            # A plain HINCRBY, not the release script: a Redis refusing writes (maxmemory) refuses it as the
            # MULTI is queued, so nothing is deleted; a script would fail inside EXEC after the DELs ran.
            pipe.hincrby(ScheduleKeys.template_refs, current.fields["t"], -1)
            template.append(current.fields["t"])

    template: list[str] = []
    left = connection.transaction(remove, key)[-1]
    if template and left <= 0:  # the last user of its template: delete it (unless a new user came meanwhile)
        RELEASE(keys=[ScheduleKeys.templates, ScheduleKeys.template_refs], args=[template[-1], 0], client=connection)


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
        return describe_all(connection, [stored])[0]
    return save(connection, schedule_id, stored.spec, origin=stored.origin, now=now, paused=False)[0]


def run_now(connection: Redis, schedule_id: str, now: datetime | None = None) -> dict[str, Any]:
    """Enqueue one run of the schedule now (even if paused; overlap policy not applied); return the job."""
    from service.jobs.describe import describe as describe_job
    from service.jobs.operations import fetch

    stored = load(connection, schedule_id)
    now = (now or server_now(connection)).replace(microsecond=0)
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
    now = now or server_now(connection)
    if not isinstance(data, dict) or set(data) - {"from", "to"}:
        raise InvalidField("body", 'send {"from": <ISO 8601>, "to": <ISO 8601>} and nothing else')
    begin, end = (_instant_field(data, name) for name in ("from", "to"))
    if end <= begin:
        raise InvalidField("to", "must be after from")
    if end > now:
        raise InvalidField("to", "must not be in the future: backfill fills past due times")
    unbounded = stored.spec.model_copy(update={"start_at": None, "end_at": None})
    skip = CALENDARS.skip(connection, stored.spec)  # a date the schedule skips is not backfilled either
    dues = unbounded.due_times(begin - timedelta(microseconds=1), end, MAX_BACKFILL + 1, skip)
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
    stored = load(connection, schedule_id)
    if not 1 <= limit <= RUNS_PAGE:
        raise InvalidField("limit", f"must be 1 to {RUNS_PAGE}")
    if stored.legacy:  # not migrated yet: its records are still the first release's list
        records = [json.loads(r) for r in connection.lrange(ScheduleKeys.runs(schedule_id), 0, limit - 1)]
    else:
        slots = record_fields(stored.state, limit)
        packed = connection.hmget(ScheduleKeys.schedule(schedule_id), slots) if slots else []
        records = [decode_record(schedule_id, p.decode()) for p in packed if p is not None]
    pipe = connection.pipeline(transaction=False)
    for record in records:
        pipe.hget(job_key(record.get("job_id", "")), "status")
    for record, status in zip(records, pipe.execute(), strict=True):
        record.setdefault("job_id", None)
        if record["status"] == "enqueued":
            record["status"] = status.decode() if status else "expired"
    return {"runs": records, "next_cursor": None}


def preview(spec: ScheduleSpec, now: datetime, count: int = 10, skip: SkipDates | None = None) -> dict[str, Any]:
    """Return the next `count` due times of `spec` after `now` that fire (none on a date `skip` names),
    in UTC and in its zone."""
    if not isinstance(count, int) or not 1 <= count <= MAX_PREVIEW:
        raise InvalidField("count", f"must be a whole number from 1 to {MAX_PREVIEW}")
    from service.schedules.cron import load_zone

    zone = load_zone(spec.timezone)
    dues = spec.due_times(now, LATEST, count, skip)
    times = [{"utc": isoformat(d), "local": d.astimezone(zone).isoformat()} for d in dues]
    return {"timezone": spec.timezone, "times": times}


def preview_saved(connection: Redis, schedule_id: str, count: int = 10, now: datetime | None = None) -> dict[str, Any]:
    """Return the preview of a stored schedule (see preview)."""
    stored = load(connection, schedule_id)
    skip = CALENDARS.skip(connection, stored.spec)
    return {"id": schedule_id, **preview(stored.spec, now or server_now(connection), count, skip)}


def preview_body(connection: Redis, data: Any, count: int = 10, now: datetime | None = None) -> dict[str, Any]:
    """Return the preview of an unsaved schedule body (validated like PUT, its calendars too)."""
    spec = parse_spec(data)
    calendars.check_exist(connection, spec.skip_calendars)
    return preview(spec, now or server_now(connection), count, CALENDARS.skip(connection, spec))
