"""Declared schedules: a TOML or YAML file of schedules (and calendars), synced into Redis at scheduler start.

The file (SCHEDULES_FILE) maps schedule ids to specs, the same fields as
`PUT /schedules/<id>`, and may map calendar ids to calendars, the body of
`PUT /calendars/<id>`:

    [schedules.nightly-report]          # TOML            schedules:            # YAML
    task = "reports.generate"                             nightly-report:
    cron = "0 3 * * *"                                      task: reports.generate
    timezone = "Europe/Vienna"                              cron: "0 3 * * *"
    skip_calendars = ["holidays"]                           skip_calendars: [holidays]
    [calendars.holidays]                                  calendars:
    dates = [2026-12-25, 2026-12-26]                        holidays: {dates: [2026-12-25]}

Sync is an idempotent upsert of every entry, calendars first (an unchanged
entry writes nothing, so running it at every start, from several
schedulers, changes nothing), then removes the schedules and calendars the
file created earlier and no longer declares (a calendar still skipped by a
schedule stays until it is not). Schedules and calendars created by the API
or by code are never removed. The whole file is validated before anything is
written, a calendar a schedule names included.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml
from redis import Redis

from service.core.errors import CalendarInUse, ConfigError, InvalidField
from service.core.keys import CalendarKeys, ScheduleKeys
from service.schedules import calendars
from service.schedules.calendars import CalendarBody, check_calendar_id, parse_calendar
from service.schedules.operations import delete, save
from service.schedules.spec import ScheduleSpec, check_schedule_id, parse_spec
from service.schedules.store import read

log = logging.getLogger(__name__)
TABLES = ("schedules", "calendars")


def load_file(path: str | Path) -> tuple[dict[str, ScheduleSpec], dict[str, CalendarBody]]:
    """Return the validated specs and calendars declared in `path`; raise ConfigError naming the entry and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"SCHEDULES_FILE: cannot read {path.name}: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(data, dict) or "schedules" not in data or set(data) - set(TABLES):
        raise ConfigError("SCHEDULES_FILE: needs a top-level 'schedules' table mapping ids to schedules")
    tables = {name: data.get(name) or {} for name in TABLES}  # YAML `schedules:` with nothing under it: none
    if not all(isinstance(table, dict) for table in tables.values()):
        raise ConfigError("SCHEDULES_FILE: 'schedules' and 'calendars' must map ids to entries")
    specs, bodies = {}, {}
    for calendar_id, body in tables["calendars"].items():
        try:
            bodies[check_calendar_id(calendar_id)] = parse_calendar(_plain(body))
        except InvalidField as exc:
            raise ConfigError(f"SCHEDULES_FILE: calendar {str(calendar_id)[:100]!r}: {exc.message}") from None
    for schedule_id, body in tables["schedules"].items():
        try:
            specs[check_schedule_id(schedule_id)] = parse_spec(_plain(body))
        except InvalidField as exc:
            raise ConfigError(f"SCHEDULES_FILE: schedule {str(schedule_id)[:100]!r}: {exc.message}") from None
    return specs, bodies


def _plain(value: Any) -> Any:
    """Return `value` with the date-times TOML and YAML parse natively turned back into ISO strings."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def sync(
    connection: Redis, path: str | Path, progress: Callable[[int, int], None] | None = None
) -> dict[str, list[str]]:
    """Upsert every declared calendar and schedule, remove file-created ones no longer declared; return changes.

    `progress(done, total)` after each schedule upserted or looked at for removal.
    """
    specs, bodies = load_file(path)
    changed: dict[str, list[str]] = {"created": [], "updated": [], "removed": []}
    changed["created"] += _sync_calendars(connection, specs, bodies)
    undeclared = [m.decode() for m in connection.smembers(ScheduleKeys.declared) if m.decode() not in specs]
    total = len(specs) + len(undeclared)
    for done, (schedule_id, spec) in enumerate(specs.items(), start=1):
        before = read(connection, schedule_id)
        _, created = save(connection, schedule_id, spec, origin="file")
        after = read(connection, schedule_id)
        if created:
            changed["created"].append(schedule_id)
        elif before is not None and after is not None and before.spec_json != after.spec_json:
            changed["updated"].append(schedule_id)
        if after is not None and after.origin == "file":
            connection.sadd(ScheduleKeys.declared, schedule_id)
        if progress:
            progress(done, total)
    for done, schedule_id in enumerate(undeclared, start=len(specs) + 1):
        stored = read(connection, schedule_id)
        if stored is not None and stored.origin == "file":
            delete(connection, schedule_id)
            changed["removed"].append(schedule_id)
        connection.srem(ScheduleKeys.declared, schedule_id)
        if progress:
            progress(done, total)
    changed["removed"] += _remove_undeclared_calendars(connection, bodies)
    return changed


def _sync_calendars(connection: Redis, specs: dict[str, ScheduleSpec], bodies: dict[str, CalendarBody]) -> list[str]:
    """Upsert the declared calendars, once every calendar a schedule names is known to exist; return those created."""
    named = {c: schedule_id for schedule_id, spec in specs.items() for c in spec.skip_calendars if c not in bodies}
    absent = calendars.missing(connection, named)
    if absent:
        raise ConfigError(
            f"SCHEDULES_FILE: schedule {named[absent[0]]!r}: skip_calendars: {absent[0]!r} is not a calendar"
        )
    created = []
    for calendar_id, body in bodies.items():
        if calendars.save(connection, calendar_id, body, origin="file")[1]:
            created.append(f"calendar {calendar_id}")
        connection.sadd(CalendarKeys.declared, calendar_id)
    return created


def _remove_undeclared_calendars(connection: Redis, bodies: dict[str, CalendarBody]) -> list[str]:
    removed = []
    for member in connection.smembers(CalendarKeys.declared):
        calendar_id = member.decode()
        if calendar_id in bodies:
            continue
        if connection.hget(CalendarKeys.calendar(calendar_id), "origin") != b"file":
            connection.srem(CalendarKeys.declared, calendar_id)
            continue
        try:
            calendars.delete(connection, calendar_id)  # also leaves the declared set
        except CalendarInUse as exc:  # kept, and tried again at the next sync
            log.warning("SCHEDULES_FILE no longer declares calendar %s, but it stays: %s", calendar_id, exc.message)
            continue
        removed.append(f"calendar {calendar_id}")
    return removed
