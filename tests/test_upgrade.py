"""Upgrades keep data: what the previous release stored is read, migrated, fired and run by this one.

tests/data/upgrade holds a dump of a Redis the previous release's processes
filled (tests/data/upgrade/make_fixture.py): schedules of each trigger kind
with run history and counters, a paused one with a note, a declared one,
finished, failed and queued jobs; and what that release's API answered.
The dump is written back with plain commands, so it restores on every server
of the matrix.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from service.core.clock import server_now
from service.core.keys import queue_key
from service.dev.embedded_redis import free_port
from service.schedules.migrate import migrate_all
from tests.conftest import AUTH
from tests.helpers import wait_until
from tests.processes import Processes

pytestmark = [pytest.mark.slow, pytest.mark.matrix]

FIXTURE = Path(__file__).parent / "data" / "upgrade"
ANSWERS = json.loads((FIXTURE / "answers.json").read_text())


def value(item: Any) -> Any:
    return base64.b64decode(item["b64"]) if isinstance(item, dict) else item


def restore(connection: Redis) -> None:
    """Write every key of the dump back with plain commands, with its remaining TTL."""
    pipe = connection.pipeline(transaction=False)
    for key, item in json.loads((FIXTURE / "redis.json").read_text()).items():
        kind, data = item["type"], item["value"]
        if kind == "string":
            pipe.set(key, value(data))
        elif kind == "hash":
            pipe.hset(key, mapping={k: value(v) for k, v in data.items()})
        elif kind == "list":
            pipe.rpush(key, *[value(v) for v in data])
        elif kind == "set":
            pipe.sadd(key, *[value(v) for v in data])
        elif kind == "zset":
            pipe.zadd(key, {value(m): float(s) for m, s in data})
        elif kind == "stream":
            for entry_id, fields in data:
                pipe.xadd(key, {k: value(v) for k, v in fields.items()}, id=entry_id)
        else:
            raise AssertionError(f"{key}: type {kind}")
        if item["pttl"] > 0:
            pipe.pexpire(key, item["pttl"])
    pipe.execute()


def http(port: int, path: str) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=AUTH)
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200, path
        return json.loads(response.read())


def holds(new: Any, old: Any) -> bool:
    """`new` says everything `old` said (objects may have gained fields)."""
    if isinstance(old, dict):
        return isinstance(new, dict) and all(k in new and holds(new[k], v) for k, v in old.items())
    if isinstance(old, list):
        return isinstance(new, list) and len(new) == len(old) and all(map(holds, new, old))
    return new == old


def assert_answers_as_the_release_did(port: int) -> None:
    listed = http(port, "/schedules?limit=100")
    assert holds(listed, ANSWERS["schedules"]), (listed, ANSWERS["schedules"])
    for schedule_id, old in ANSWERS["schedule"].items():
        assert holds(http(port, f"/schedules/{schedule_id}"), old), schedule_id
        assert holds(http(port, f"/schedules/{schedule_id}/runs?limit=50"), ANSWERS["runs"][schedule_id]), schedule_id
    for job_id, old in ANSWERS["jobs"].items():
        assert holds(http(port, f"/jobs/{job_id}"), old), job_id


def test_the_api_answers_what_the_previous_release_answered_before_and_after_migration(
    connection: Redis, processes: Processes
) -> None:
    restore(connection)
    port = free_port()
    processes.web(port)
    assert_answers_as_the_release_did(port)  # read as stored
    assert migrate_all(connection) == len(ANSWERS["schedule"])  # what scheduler.py does at start
    assert_answers_as_the_release_did(port)
    assert migrate_all(connection) == 0


RUN_STATE = ("next_run_at", "last_run_at", "last_job_id", "counters", "lag_ms", "buffered_run_for")


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


def runs_after(port: int, schedule_id: str, since: datetime) -> list[dict[str, Any]]:
    runs = http(port, f"/schedules/{schedule_id}/runs?limit=50")["runs"]
    return [r for r in runs if r.get("kind") == "scheduled" and instant(r["scheduled_for"]) > since]


def test_the_new_processes_fire_the_old_schedules_on_time_and_run_the_old_jobs(
    connection: Redis, processes: Processes
) -> None:
    restore(connection)
    port = free_port()
    processes.web(port)
    started = server_now(connection)
    # the schedules were last fired when the dump was made: the scheduler first catches up on every due time
    # since (coalesced), a pass per 1,000 of them, so the older the dump the longer the first run waits
    catch_up = 30 + (started - instant(ANSWERS["dumped_at"])).days
    processes.scheduler(env={"SCHEDULES_FILE": str(FIXTURE / "schedules.toml")})
    processes.worker("high", "default", "low")

    queued = [j for j, old in ANSWERS["jobs"].items() if old["status"] == "queued"]
    wait_until(lambda: all(http(port, f"/jobs/{j}")["status"] == "finished" for j in queued), timeout=30)
    assert [http(port, f"/jobs/{j}")["result"] for j in queued] == [
        {"args": ANSWERS["jobs"][j]["args"], "kwargs": {}} for j in queued
    ]
    # the interval's grid (start_at + k * 5 s) and the Vienna cron's next minute, each fired once, not early
    fresh = wait_until(lambda: [r for r in runs_after(port, "interval-5s", started) if r["status"] == "finished"][1:],
                       timeout=catch_up, what="two interval runs after the upgrade")  # fmt: skip
    minute = started.replace(second=0, microsecond=0) + timedelta(minutes=1)
    cron = wait_until(lambda: runs_after(port, "cron-vienna", minute - timedelta(seconds=1)), timeout=catch_up + 60)
    for run in [*fresh, *cron]:
        due = instant(run["scheduled_for"])
        assert instant(run["enqueued_at"]) >= due
    assert all(instant(r["scheduled_for"]).timestamp() % 5 == 0 for r in fresh)
    assert instant(cron[-1]["scheduled_for"]) == minute
    runs = [r for r in http(port, "/schedules/interval-5s/runs?limit=50")["runs"] if r["job_id"]]
    assert len({r["job_id"] for r in runs}) == len(runs)
    interval = http(port, "/schedules/interval-5s")
    assert interval["counters"]["runs"] > ANSWERS["schedule"]["interval-5s"]["counters"]["runs"]

    # the paused one stays paused with its note; the one-shot that ran does not run again and the far one
    # keeps its time; the declared one is not rewritten by the file's sync (its run state moves with the clock)
    for schedule_id in ("interval-paused", "once-done", "once-later"):
        assert holds(http(port, f"/schedules/{schedule_id}"), ANSWERS["schedule"][schedule_id]), schedule_id
        assert holds(http(port, f"/schedules/{schedule_id}/runs?limit=50"), ANSWERS["runs"][schedule_id])
    declared = {k: v for k, v in ANSWERS["schedule"]["declared-report"].items() if k not in RUN_STATE}
    assert holds(http(port, "/schedules/declared-report"), declared)
    assert not connection.lrange(queue_key("low"), 0, -1)
