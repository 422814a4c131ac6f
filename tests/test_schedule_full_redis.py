"""A Redis that refuses writes (maxmemory reached, MISCONF): schedulers keep running and catch up, writes get 503.

Each test has a Redis of its own (tests.redis_full puts it in the state).
While Redis refuses writes no run can be created; once it accepts them the
scheduler fires every due time within its grace and records the others.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from redis import Redis

from service import create_app
from service.core.clock import server_now
from service.core.config import Settings
from service.core.connection import connect
from service.core.keys import queue_key
from service.dev.embedded_redis import EmbeddedRedis
from service.schedules import operations as schedules
from service.schedules.spec import isoformat, parse_instant
from service.tasks.registry import load_task_modules
from tests.conftest import AUTH, TASK_MODULES, TOKEN
from tests.helpers import snapshot, wait_until
from tests.processes import Processes
from tests.redis_full import HOW, refusing_writes

pytestmark = [pytest.mark.slow, pytest.mark.matrix]
load_task_modules(TASK_MODULES)
GRACE_SECONDS = 3
EPISODE_SECONDS = 7


def history(redis: Redis, schedule_id: str) -> list[dict[str, Any]]:
    """The run records of a schedule, oldest first, with their due time as epoch seconds."""
    records = list(reversed(schedules.runs(redis, schedule_id, 100)["runs"]))
    for record in records:
        record["due"] = int(parse_instant(record["scheduled_for"], "due").timestamp())
    return records


def contiguous(records: list[dict[str, Any]]) -> bool:
    dues = [r["due"] for r in records]
    return dues == list(range(dues[0], dues[0] + len(dues)))


@pytest.mark.parametrize("how", HOW)
def test_schedulers_ride_a_redis_that_refuses_writes_and_fire_within_grace_after(
    private_redis: EmbeddedRedis, processes: Processes, tmp_path: Path, how: str
) -> None:
    redis = connect(private_redis.url, role="worker")
    env = {"REDIS_URL": private_redis.url}
    leader = processes.scheduler(env=env)
    each = {"task": "diag.echo", "interval": 1, "coalesce": False, "overlap": "allow"}
    schedules.upsert(redis, "each", {**each, "misfire_grace_time": GRACE_SECONDS})
    schedules.upsert(redis, "co", {"task": "diag.echo", "interval": 1, "overlap": "allow"})
    wait_until(lambda: len(history(redis, "each")) >= 2 and len(history(redis, "co")) >= 2, timeout=30)
    declared = tmp_path / "schedules.toml"
    declared.write_text('[schedules.declared]\ntask = "diag.echo"\ninterval = 1\n')

    with refusing_writes(redis, how):
        began = server_now(redis)
        queued = redis.lrange(queue_key("default"), 0, -1)
        late = processes.scheduler(name="late", env={**env, "SCHEDULES_FILE": str(declared)})
        wait_until(lambda: server_now(redis) > began + timedelta(seconds=EPISODE_SECONDS), timeout=30)
        assert redis.lrange(queue_key("default"), 0, -1) == queued  # no run could be written
        assert leader.alive() and late.alive()
        assert not redis.exists("svc:schedule:declared")
    lifted = server_now(redis)

    wait_until(lambda: history(redis, "each")[-1]["due"] > lifted.timestamp() + 1, timeout=30, what="runs again")
    wait_until(lambda: history(redis, "declared"), timeout=30, what="the late scheduler's file to be synced")
    records = history(redis, "each")
    assert contiguous(records)  # every due time recorded once, as a run or as missed
    during = [r for r in records if began.timestamp() < r["due"] < lifted.timestamp()]
    assert len(during) >= EPISODE_SECONDS - 1
    missed = [r for r in during if r["status"] == "missed"]
    fired_after = [r for r in during if r["job_id"] and parse_instant(r["enqueued_at"], "at") >= lifted]
    assert missed and fired_after, during  # older than the grace at recovery: missed; younger: fired
    assert all(r["lag_ms"] <= GRACE_SECONDS * 1000 for r in records if r["job_id"])
    assert min(r["due"] for r in fired_after) > max(r["due"] for r in missed)

    co = history(redis, "co")
    assert contiguous(co)
    co_during = [r for r in co if began.timestamp() < r["due"] < lifted.timestamp()]
    # Every due time of the episode but the last coalesced into the last, fired after.
    assert {r["status"] for r in co_during[:-1]} == {"coalesced"} and len(co_during) >= EPISODE_SECONDS - 1
    assert co_during[-1]["job_id"] and parse_instant(co_during[-1]["enqueued_at"], "at") >= lifted
    assert leader.alive() and late.alive()
    for scheduler in (leader, late):
        log = scheduler.output()
        assert log.count("Redis refuses writes") == 1, log  # once per state change, not once per tick
        assert log.count("accepts writes again") == 1, log


@pytest.fixture
def full_api(private_redis: EmbeddedRedis) -> tuple[FlaskClient, Redis]:
    app = create_app(Settings(redis_url=private_redis.url, api_tokens=(TOKEN,), task_modules=TASK_MODULES))
    return app.test_client(), connect(private_redis.url, role="worker")


@pytest.mark.parametrize("how", HOW)
def test_schedule_writes_answer_503_redis_full_and_write_nothing(full_api: tuple[FlaskClient, Redis], how: str) -> None:
    client, redis = full_api
    body = {"task": "diag.echo", "interval": 60}
    for schedule_id in ("kept", "held"):
        assert client.put(f"/schedules/{schedule_id}", json=body, headers=AUTH).status_code == 201
    assert client.post("/schedules/held/pause", json={"note": "n"}, headers=AUTH).status_code == 200
    now = server_now(redis)
    past = {"from": isoformat(now - timedelta(hours=1)), "to": isoformat(now - timedelta(minutes=1))}
    writes = [
        ("PUT", "/schedules/new", body),
        ("PUT", "/schedules/kept", {**body, "interval": 30}),
        ("DELETE", "/schedules/kept", None),
        ("POST", "/schedules/kept/pause", {"note": "maintenance"}),
        ("POST", "/schedules/held/resume", None),
        ("POST", "/schedules/kept/run", None),
        ("POST", "/schedules/kept/backfill", past),
    ]
    with refusing_writes(redis, how):
        before = snapshot(redis)
        for method, path, data in writes:
            response = client.open(path, method=method, json=data, headers=AUTH)
            assert response.status_code == 503, (method, path, response.get_json())
            assert (
                response.get_json()["error"]["code"] == {"maxmemory": "redis_full", "misconf": "redis_read_only"}[how]
            )
            assert response.headers["Retry-After"] == "5"
        assert snapshot(redis) == before  # nothing written half-way
        assert client.get("/schedules/kept", headers=AUTH).get_json()["interval"] == 60  # reads still answer
    assert client.put("/schedules/kept", json={**body, "interval": 30}, headers=AUTH).status_code == 200
