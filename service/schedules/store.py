"""Schedule storage: how schedules are laid out in Redis (names in service.core.keys) and reading them back.

One hash per schedule holds its spec (JSON) and its state (next due time,
paused, note, last run, counters); a list per schedule holds its recent
runs, newest first. Two sorted sets index them: every id (score 0, so ids
page lexicographically) and the due set the scheduler fires from (score =
next due time in epoch milliseconds, jitter included).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from redis import Redis

from service.core.keys import ScheduleKeys
from service.core.lua import script
from service.schedules.spec import DueTimes, ScheduleSpec

RUNS_KEPT = 100
COUNTERS = ("runs", "missed", "skipped", "dropped", "coalesced")


@dataclass(frozen=True)
class StoredSchedule:
    """A schedule as read from Redis: its id, parsed spec and raw state fields."""

    id: str
    spec: ScheduleSpec
    spec_json: str
    state: dict[str, str]

    def number(self, field: str) -> int | None:
        value = self.state.get(field)
        return int(float(value)) if value not in (None, "") else None

    @property
    def paused(self) -> bool:
        return self.state.get("paused") == "1"


def dump_spec(spec: ScheduleSpec) -> str:
    """Return the canonical JSON of a spec (the same spec always gives the same string)."""
    return json.dumps(spec.model_dump(mode="json", exclude={"paused"}), sort_keys=True, separators=(",", ":"))


@functools.lru_cache(maxsize=200_000)
def load_spec(spec_json: str) -> ScheduleSpec:
    """Return the spec stored as `spec_json` (cached: the scheduler reads the same specs every pass)."""
    return ScheduleSpec.model_validate(json.loads(spec_json))


_DUE_TIMES: dict[tuple, DueTimes] = {}


@functools.lru_cache(maxsize=200_000)
def due_times(spec_json: str) -> DueTimes:
    """Return the due-time calculator of a stored spec, shared by every spec with the same trigger."""
    spec = load_spec(spec_json)
    trigger = spec.trigger()
    found = _DUE_TIMES.get(trigger)
    if found is None:
        if len(_DUE_TIMES) >= 20_000:
            _DUE_TIMES.clear()
        found = _DUE_TIMES[trigger] = DueTimes(spec)
    return found


def decode(raw: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()
    }


def read(connection: Redis, schedule_id: str) -> StoredSchedule | None:
    """Return the stored schedule `schedule_id`, or None."""
    found = read_many(connection, [schedule_id])
    return found[0]


def read_many(connection: Redis, schedule_ids: list[str]) -> list[StoredSchedule | None]:
    """Return the stored schedules for `schedule_ids` (None where missing), in one round trip."""
    pipe = connection.pipeline(transaction=False)
    for schedule_id in schedule_ids:
        pipe.hgetall(ScheduleKeys.schedule(schedule_id))
    return [from_raw(schedule_id, raw) for schedule_id, raw in zip(schedule_ids, pipe.execute(), strict=True)]


# What firing needs of a schedule; reading only these keeps a 10,000-run burst's read cheap.
FIRING_FIELDS = ("spec", "next_due", "buffered_due", "paused", "last_job_id")


def read_for_firing(connection: Redis, schedule_ids: list[str]) -> list[StoredSchedule | None]:
    """Return the schedules with only FIRING_FIELDS in their state (None where missing), in one round trip."""
    pipe = connection.pipeline(transaction=False)
    for schedule_id in schedule_ids:
        pipe.hmget(ScheduleKeys.schedule(schedule_id), FIRING_FIELDS)
    found = []
    for schedule_id, values in zip(schedule_ids, pipe.execute(), strict=True):
        raw = {name: value for name, value in zip(FIRING_FIELDS, values, strict=True) if value is not None}
        found.append(from_raw(schedule_id, raw))
    return found


READ_DUE = script("read_due")


def read_due(connection: Redis, max_score_ms: int, limit: int) -> list[tuple[str, int, StoredSchedule | None]]:
    """Return up to `limit` (id, due score, schedule) with score <= `max_score_ms`, earliest first.

    A schedule carries only next_due and buffered_due in its state; None where
    a due member has no schedule hash (deleted meanwhile, or a stray member).
    """
    reply = READ_DUE(keys=[ScheduleKeys.due], args=[ScheduleKeys.prefix, max_score_ms, limit], client=connection)
    specs, rows = json.loads(reply)
    found: list[tuple[str, int, StoredSchedule | None]] = []
    for start in range(0, len(rows), 5):  # flat: one list for the batch, not one per schedule
        schedule_id, score, number, next_due, buffered_due = rows[start : start + 5]
        if not number:
            found.append((schedule_id, int(float(score)), None))
            continue
        spec_json = specs[number - 1]
        state = {"next_due": next_due, "buffered_due": buffered_due} if buffered_due else {"next_due": next_due}
        schedule = StoredSchedule(schedule_id, load_spec(spec_json), spec_json, state)
        found.append((schedule_id, int(float(score)), schedule))
    return found


def from_raw(schedule_id: str, raw: dict[Any, Any]) -> StoredSchedule | None:
    """Return the schedule stored as the hash fields `raw` (None if it has no spec, i.e. does not exist)."""
    state = decode(raw)
    spec_json = state.pop("spec", None)
    return StoredSchedule(schedule_id, load_spec(spec_json), spec_json, state) if spec_json else None
