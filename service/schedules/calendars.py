"""Calendars: named lists of dates on which schedules fire nothing (holidays, maintenance days).

A calendar is stored once, as one hash (its dates as one JSON array, their
digest, description, origin, times), and any number of schedules name it in
`skip_calendars`: 50,000 per-user schedules share one holiday calendar
without copying it. A refs hash (CalendarKeys.refs) counts the schedules naming each
calendar; every schedule write keeps it in the same script or MULTI, so a calendar in
use cannot be deleted (409) and a schedule cannot name a missing one (422).

Readers (the scheduler, previews, `next_run_at`) go through CalendarCache:
one round trip for the digests of the calendars they need, the dates only
when a digest changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator
from redis import Redis
from redis.client import Pipeline

from service.core.clock import server_now
from service.core.errors import CalendarInUse, CalendarNotFound, InvalidField
from service.core.keys import CalendarKeys
from service.core.lua import script
from service.jobs.schemas import Strict, validate
from service.schedules.spec import SCHEDULE_ID, ScheduleSpec, SkipDates, check_dates, isoformat
from service.schedules.spec import check_schedule_id as check_calendar_id  # calendar ids are schedule ids
from service.schedules.store import id_page

log = logging.getLogger(__name__)

MAX_DATES = 10_000
MAX_PAGE = 1000
DELETE = script("delete_calendar")


class CalendarBody(Strict):
    """PUT /calendars/<id>: the dates a calendar lists (order and repeats do not matter) and what they are."""

    dates: list[str] = Field(max_length=MAX_DATES, description="dates as YYYY-MM-DD, at most 10,000")
    description: str = Field(default="", max_length=1000)

    @field_validator("dates")
    @classmethod
    def _dates(cls, value: list[str]) -> list[str]:
        return check_dates(value)


class CalendarOut(BaseModel):
    """A calendar as the API answers it; `used_by` counts the schedules that skip its dates."""

    id: str
    dates: list[str]
    description: str
    origin: str
    created_at: str | None
    updated_at: str | None
    used_by: int


class CalendarList(BaseModel):
    calendars: list[CalendarOut]
    next_cursor: str | None


def parse_calendar(data: Any) -> CalendarBody:
    """Return `data` validated as a calendar body; InvalidField naming the field otherwise."""
    if not isinstance(data, dict):
        raise InvalidField("body", "a calendar must be a JSON object")
    return validate(CalendarBody, {k: v for k, v in data.items() if k != "id"})


def put(
    connection: Redis, calendar_id: str, data: Any, *, origin: str = "api", now: datetime | None = None
) -> tuple[dict[str, Any], bool]:
    """Create or replace calendar `calendar_id`; return (its JSON, created?). The same body changes nothing."""
    check_calendar_id(calendar_id)
    if isinstance(data, dict) and "id" in data and data["id"] != calendar_id:
        raise InvalidField("id", f"{data['id']!r} differs from the id in the path {calendar_id!r}")
    return save(connection, calendar_id, parse_calendar(data), origin=origin, now=now)


def save(
    connection: Redis, calendar_id: str, body: CalendarBody, *, origin: str = "api", now: datetime | None = None
) -> tuple[dict[str, Any], bool]:
    """Store a validated calendar under `calendar_id` (see put)."""
    dates = json.dumps(body.dates, separators=(",", ":"))
    digest = hashlib.sha1(dates.encode()).hexdigest()[:16]
    key = CalendarKeys.calendar(calendar_id)
    now = now or server_now(connection)

    def write(pipe: Pipeline) -> bool | None:
        digest_now, description_now = pipe.hmget(key, "digest", "description")
        if digest_now is not None and digest_now.decode() == digest and description_now.decode() == body.description:
            pipe.unwatch()
            return None
        pipe.multi()
        fields = {"dates": dates, "digest": digest, "description": body.description, "updated_at": isoformat(now)}
        if digest_now is None:
            fields.update(created_at=isoformat(now), origin=origin)
        pipe.hset(key, mapping=fields)
        pipe.zadd(CalendarKeys.index, {calendar_id: 0})
        return digest_now is None

    created = connection.transaction(write, key, value_from_callable=True)
    return get(connection, calendar_id), bool(created)


def get(connection: Redis, calendar_id: str) -> dict[str, Any]:
    """Return calendar `calendar_id` as JSON; CalendarNotFound if there is none."""
    found = read_many(connection, [calendar_id] if SCHEDULE_ID.fullmatch(calendar_id) else [])
    if not found:
        raise CalendarNotFound(f"no calendar with id {calendar_id[:100]!r}")
    return found[0]


def read_many(connection: Redis, calendar_ids: list[str]) -> list[dict[str, Any]]:
    """Return the calendars of `calendar_ids` that exist, as JSON, in one round trip."""
    pipe = connection.pipeline(transaction=False)
    for calendar_id in calendar_ids:
        pipe.hgetall(CalendarKeys.calendar(calendar_id))
    pipe.hmget(CalendarKeys.refs, calendar_ids) if calendar_ids else pipe.echo("")
    *hashes, refs = pipe.execute(raise_on_error=False)  # a key of another type (planted) reads as no calendar
    if not isinstance(refs, list):
        refs = [None] * len(hashes)
    found = []
    for calendar_id, raw, used in zip(calendar_ids, hashes, refs, strict=True):
        calendar = _calendar(calendar_id, raw, used) if isinstance(raw, dict) and raw else None
        if calendar is not None:
            found.append(calendar)
    return found


def _calendar(calendar_id: str, raw: dict[bytes, bytes], used: bytes | None) -> dict[str, Any] | None:
    """A stored calendar as JSON; None (logged) when the record is not one the service wrote."""
    try:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        dates = check_dates(json.loads(fields["dates"]))
        return {
            "id": calendar_id,
            "dates": dates,
            "description": fields.get("description", ""),
            "origin": fields.get("origin", "api"),
            "created_at": fields.get("created_at"),
            "updated_at": fields.get("updated_at"),
            "used_by": int(used or 0),
        }
    except Exception as exc:  # whatever a record planted in Redis holds
        log.warning("calendar %r cannot be read (%s): left alone", calendar_id[:100], type(exc).__name__)
        return None


def list_calendars(
    connection: Redis, cursor: str | None = None, limit: int = 100, *, max_page: int = MAX_PAGE
) -> dict[str, Any]:
    """Return one page of calendars in id order and the cursor of the next page (None at the end)."""
    page, next_cursor = id_page(connection, CalendarKeys.index, cursor, limit, max_page)
    return {"calendars": read_many(connection, page), "next_cursor": next_cursor}


def delete(connection: Redis, calendar_id: str) -> None:
    """Remove calendar `calendar_id`; CalendarInUse while schedules skip by it, CalendarNotFound if absent."""
    if not SCHEDULE_ID.fullmatch(calendar_id):
        raise CalendarNotFound(f"no calendar with id {calendar_id[:100]!r}")
    keys = [CalendarKeys.calendar(calendar_id), CalendarKeys.index, CalendarKeys.refs, CalendarKeys.declared]
    used = int(DELETE(keys=keys, args=[calendar_id], client=connection))
    if used < 0:
        raise CalendarNotFound(f"no calendar with id {calendar_id[:100]!r}")
    if used > 0:
        raise CalendarInUse(
            f"calendar {calendar_id!r} is skipped by {used} schedule(s): remove it from their skip_calendars first"
        )


# -- schedules that name calendars -----------------------------------------------------------------


def missing(client: Redis | Pipeline, calendar_ids: Iterable[str]) -> list[str]:
    """The ids among `calendar_ids` that name no calendar (one ZMSCORE; inside WATCH it runs at once)."""
    ids = sorted(set(calendar_ids))
    if not ids:
        return []
    scores = client.zmscore(CalendarKeys.index, ids)
    return [calendar_id for calendar_id, score in zip(ids, scores, strict=True) if score is None]


def check_exist(client: Redis | Pipeline, calendar_ids: Iterable[str]) -> None:
    """InvalidField('skip_calendars') naming the first id that is no calendar."""
    absent = missing(client, calendar_ids)
    if absent:
        raise InvalidField("skip_calendars", f"{absent[0]!r} is not a calendar (create it with PUT /calendars/<id>)")


def count_refs(pipe: Pipeline, before: ScheduleSpec | None, after: ScheduleSpec | None) -> None:
    """Queue the changes to the calendars' schedule counts when a schedule goes from `before` to `after`."""
    old = set(before.skip_calendars) if before is not None else set()
    new = set(after.skip_calendars) if after is not None else set()
    for calendar_id in sorted(new - old):
        pipe.hincrby(CalendarKeys.refs, calendar_id, 1)
    for calendar_id in sorted(old - new):
        pipe.hincrby(CalendarKeys.refs, calendar_id, -1)


NO_DATES: frozenset[str] = frozenset()


class CalendarCache:
    """Calendars' dates as the readers of one process last saw them, refreshed when their digest changes.

    `per_pass`: digests are read once per pass (new_pass() starts one), not at every read: the scheduler
    plans a chunk while Redis runs the one before, and a read there would wait for that chunk.
    """

    def __init__(self, per_pass: bool = False) -> None:
        self._dates: dict[str, tuple[str, frozenset[str]]] = {}
        # SkipDates made per skip key, with the calendars' date sets they were made of: a burst's batches share them.
        self._skips: dict[SkipKey, tuple[tuple[frozenset[str], ...], SkipDates]] = {}
        self._warned: set[str] = set()
        self._checked: set[str] | None = set() if per_pass else None

    def new_pass(self) -> None:
        """The next read checks every calendar's digest again."""
        if self._checked is not None:
            self._checked.clear()

    def dates(self, connection: Redis, calendar_ids: Iterable[str]) -> dict[str, frozenset[str]]:
        """The dates of each calendar in `calendar_ids` (a missing one: none, logged once)."""
        ids = sorted(set(calendar_ids))
        stale = ids if self._checked is None else [i for i in ids if i not in self._checked]
        if stale:
            self._refresh(connection, stale)
            if self._checked is not None:
                self._checked.update(stale)
        found = {}
        for calendar_id in ids:
            if calendar_id in self._dates:
                found[calendar_id] = self._dates[calendar_id][1]
            elif calendar_id not in self._warned:
                self._warned.add(calendar_id)
                log.warning("calendar %s is named by a schedule but does not exist: it skips nothing", calendar_id)
        return found

    def _refresh(self, connection: Redis, ids: list[str]) -> None:
        """Read the digests of `ids` (one round trip) and the dates of those that changed."""
        pipe = connection.pipeline(transaction=False)
        for calendar_id in ids:
            pipe.hget(CalendarKeys.calendar(calendar_id), "digest")
        for calendar_id, digest in zip(ids, pipe.execute(raise_on_error=False), strict=True):
            cached = self._dates.get(calendar_id)
            if not isinstance(digest, bytes):  # none, or a key of another type (planted): skips nothing
                self._dates.pop(calendar_id, None)
            elif cached is None or cached[0] != digest.decode():
                digest, dates = connection.hmget(CalendarKeys.calendar(calendar_id), "digest", "dates")
                try:
                    self._dates[calendar_id] = (digest.decode(), frozenset(check_dates(json.loads(dates))))
                except Exception:  # gone meanwhile, or not a calendar the service wrote: it skips nothing
                    self._dates.pop(calendar_id, None)
                    log.warning("calendar %r cannot be read: it skips nothing", calendar_id[:100])

    def skips(self, connection: Redis, specs: Iterable[ScheduleSpec]) -> dict[SkipKey, SkipDates]:
        """SkipDates by skip_key() of the specs that skip any date; one digest read for all of them."""
        distinct = {id(spec): spec for spec in specs}  # schedules made from one template share its spec
        wanted = {skip_key(spec): spec for spec in distinct.values() if spec.skip_calendars or spec.skip_dates}
        if not wanted:
            return {}
        dates = self.dates(connection, (c for spec in wanted.values() for c in spec.skip_calendars))
        if len(self._skips) > 10_000:
            self._skips.clear()
        found = {}
        for key, spec in wanted.items():
            sets = tuple(dates.get(c, NO_DATES) for c in spec.skip_calendars)
            made = self._skips.get(key)
            if made is None or any(a is not b for a, b in zip(made[0], sets, strict=True)):  # a calendar changed
                made = self._skips[key] = (sets, SkipDates(spec.timezone, frozenset(spec.skip_dates).union(*sets)))
            found[key] = made[1]
        return found

    def skip(self, connection: Redis, spec: ScheduleSpec) -> SkipDates | None:
        """The SkipDates of one spec, or None when it skips no date."""
        return self.skips(connection, [spec]).get(skip_key(spec))


SkipKey = tuple[str, tuple[str, ...], tuple[str, ...]]


def skip_key(spec: ScheduleSpec) -> SkipKey:
    """What a spec's skipped dates depend on: its zone, calendars and own dates (specs alike share SkipDates)."""
    return spec.timezone, tuple(spec.skip_calendars), tuple(spec.skip_dates)


# The calendars as this process's schedule readers (API, CLI, previews) see them.
CALENDARS = CalendarCache()
