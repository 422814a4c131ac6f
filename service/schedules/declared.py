"""Declared schedules: a TOML or YAML file of schedules, synced into Redis at scheduler start.

The file (SCHEDULES_FILE) maps schedule ids to specs, the same fields as
`PUT /schedules/<id>`:

    [schedules.nightly-report]          # TOML            schedules:            # YAML
    task = "reports.generate"                             nightly-report:
    cron = "0 3 * * *"                                      task: reports.generate
    timezone = "Europe/Vienna"                              cron: "0 3 * * *"

Sync is an idempotent upsert of every entry (an unchanged entry writes
nothing, so running it at every start, from several schedulers, changes
nothing), then removes the schedules the file created earlier and no longer
declares. Schedules created by the API or by code are never removed. The
whole file is validated before anything is written.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml
from redis import Redis

from service.core.errors import ConfigError, InvalidField
from service.core.keys import ScheduleKeys
from service.schedules.operations import delete, save
from service.schedules.spec import ScheduleSpec, check_schedule_id, parse_spec
from service.schedules.store import read


def load_file(path: str | Path) -> dict[str, ScheduleSpec]:
    """Return the validated specs declared in `path`; raise ConfigError naming the entry and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"SCHEDULES_FILE: cannot read {path.name}: {str(exc).splitlines()[0][:200]}") from None
    entries = data.get("schedules") if isinstance(data, dict) and set(data) == {"schedules"} else None
    if entries is None and isinstance(data, dict) and set(data) == {"schedules"}:
        entries = {}  # YAML `schedules:` with nothing under it: declares none
    if not isinstance(entries, dict):
        raise ConfigError("SCHEDULES_FILE: needs one top-level 'schedules' table mapping ids to schedules")
    specs = {}
    for schedule_id, body in entries.items():
        try:
            specs[check_schedule_id(schedule_id)] = parse_spec(_plain(body))
        except InvalidField as exc:
            raise ConfigError(f"SCHEDULES_FILE: schedule {str(schedule_id)[:100]!r}: {exc.message}") from None
    return specs


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
    """Upsert every declared schedule and remove file-created ones no longer declared; return what changed.

    `progress(done, total)` after each schedule upserted or looked at for removal.
    """
    specs = load_file(path)
    changed: dict[str, list[str]] = {"created": [], "updated": [], "removed": []}
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
        if after is not None and after.state.get("origin") == "file":
            connection.sadd(ScheduleKeys.declared, schedule_id)
        if progress:
            progress(done, total)
    for done, schedule_id in enumerate(undeclared, start=len(specs) + 1):
        stored = read(connection, schedule_id)
        if stored is not None and stored.state.get("origin") == "file":
            delete(connection, schedule_id)
            changed["removed"].append(schedule_id)
        connection.srem(ScheduleKeys.declared, schedule_id)
        if progress:
            progress(done, total)
    return changed
