"""Migrate: schedules stored by the first release, read as they are and rewritten in today's layout.

The first release kept one hash per schedule with its spec as JSON and its
state under long field names (`spec`, `next_due`, `paused`, `runs`, ...),
and its run records as JSON in a list beside it (`<key>:runs`). Nothing else
it stored changed shape: the id index, the due set, the buffered and
declared sets and the stats hash are read as they are.

Readers see a legacy schedule like any other (service.schedules.store
reads both layouts). Before
anything writes one, `migrate` rewrites it in one MULTI (watched, so a
concurrent writer makes it start over): the hash in today's layout, its
newest RUNS_KEPT records in the ring, its template stored and counted, the
old list gone. The scheduler migrates every schedule at start
(`migrate_all`); the fire script refuses a legacy hash, and the scheduler
migrates one that appears later (a first-release process still writing).
"""

from __future__ import annotations

import json
import logging

from redis import Redis
from redis.client import Pipeline

from service.core.keys import ScheduleKeys
from service.schedules.store import LEGACY, RUNS_KEPT, StoredSchedule, decode, encode_record, from_legacy

log = logging.getLogger(__name__)

CHUNK = 1000


def rewrite(pipe: Pipeline, stored: StoredSchedule, old_records: list[bytes]) -> None:
    """Queue (inside MULTI) the rewrite of legacy `stored` with its run list `old_records` (newest first)."""
    key = ScheduleKeys.schedule(stored.id)
    packed = [encode_record(json.loads(r)) for r in reversed(old_records[:RUNS_KEPT])]  # oldest first
    fields = dict(stored.fields)
    if packed:
        fields["s"] = stored.state._replace(records=len(packed)).pack()
    fields.update({f"r{n}": record for n, record in enumerate(packed)})
    pipe.delete(key, ScheduleKeys.runs(stored.id))
    pipe.hset(key, mapping=fields)
    pipe.hsetnx(ScheduleKeys.templates, fields["t"], stored.template_json)
    pipe.hincrby(ScheduleKeys.template_refs, fields["t"], 1)


def migrate(connection: Redis, schedule_id: str) -> bool:
    """Rewrite schedule `schedule_id` in today's layout if it is in the first release's; True if it was."""
    key, runs = ScheduleKeys.schedule(schedule_id), ScheduleKeys.runs(schedule_id)

    def rewrite_if_legacy(pipe: Pipeline) -> bool:
        raw = decode(pipe.hgetall(key))
        if LEGACY not in raw:
            pipe.unwatch()
            return False
        old_records = pipe.lrange(runs, 0, RUNS_KEPT - 1)
        stored = from_legacy(schedule_id, raw)
        pipe.multi()
        rewrite(pipe, stored, old_records)
        return True

    return bool(connection.transaction(rewrite_if_legacy, key, runs, value_from_callable=True))


def migrate_all(connection: Redis) -> int:
    """Migrate every schedule still in the first release's layout; return how many were (then set the marker)."""
    if connection.get(ScheduleKeys.layout) == b"2":
        return 0
    migrated, cursor = 0, "-"
    while True:
        ids = [i.decode() for i in connection.zrangebylex(ScheduleKeys.index, cursor, "+", start=0, num=CHUNK)]
        if not ids:
            break
        pipe = connection.pipeline(transaction=False)
        for schedule_id in ids:
            pipe.hexists(ScheduleKeys.schedule(schedule_id), LEGACY)
        for schedule_id, legacy in zip(ids, pipe.execute(), strict=True):
            if legacy and migrate(connection, schedule_id):
                migrated += 1
        cursor = f"({ids[-1]}"
    connection.set(ScheduleKeys.layout, "2")
    if migrated:
        log.warning("migrated %d schedule(s) from the first release's storage layout", migrated)
    return migrated
