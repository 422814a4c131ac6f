"""Limits a single token cannot exceed: lane length, schedule count, timeouts and ttls, fan-out, page sizes."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis

from service import create_app
from service.cli.main import cli
from service.core.config import Limits, Settings
from service.core.connection import connect
from service.dev.embedded_redis import free_port
from tests.conftest import AUTH, TOKEN
from tests.helpers import snapshot
from tests.processes import Processes

LIMITS = Limits(queue_length=5, schedules=2, timeout_seconds=60, result_ttl_seconds=600, ttl_seconds=900, fanout=3)
SCHEDULE = {"task": "diag.echo", "cron": "0 3 * * *"}


@pytest.fixture
def app(settings: Settings, connection: Redis) -> Flask:
    return create_app(replace(settings, limits=LIMITS), connection=connect(settings.redis_url, role="web"))


def post(client: FlaskClient, path: str, body: Any) -> Any:
    return client.post(path, json=body, headers=AUTH)


def assert_queue_full(response: Any) -> None:
    assert response.status_code == 429, response.get_json()
    assert (
        response.get_json()["error"]["code"] == "queue_full"
        and "MAX_QUEUE_LENGTH" in response.get_json()["error"]["message"]
    )
    assert int(response.headers["Retry-After"]) > 0


def test_a_full_lane_refuses_jobs_with_429_and_writes_nothing(client: FlaskClient, connection: Redis) -> None:
    for _ in range(3):
        assert post(client, "/jobs", {"task": "diag.echo", "queue": "low"}).status_code == 202
    assert post(client, "/jobs", {"task": "diag.echo", "queue": "low", "delay": 60}).status_code == 202  # scheduled
    keyed = post(client, "/jobs", {"task": "diag.echo", "queue": "low", "idempotency_key": "k1"})
    assert keyed.status_code == 202  # the fifth waiting job: the lane is full
    before = snapshot(connection)
    assert_queue_full(post(client, "/jobs", {"task": "diag.echo", "queue": "low"}))
    assert_queue_full(post(client, "/jobs", {"task": "diag.echo", "queue": "low", "delay": 60}))
    assert_queue_full(post(client, "/jobs", {"task": "diag.echo", "queue": "low", "idempotency_key": "k2"}))
    assert snapshot(connection) == before
    repeat = post(client, "/jobs", {"task": "diag.echo", "queue": "low", "idempotency_key": "k1"})
    assert repeat.status_code == 200 and repeat.get_json()["id"] == keyed.get_json()["id"]  # nothing new to add
    assert post(client, "/jobs", {"task": "diag.echo", "queue": "high"}).status_code == 202  # another lane


def test_a_batch_that_would_overfill_a_lane_is_refused_whole(client: FlaskClient, connection: Redis) -> None:
    for _ in range(3):
        post(client, "/jobs", {"task": "diag.echo"})
    before = snapshot(connection)
    batch = {"jobs": [{"task": "diag.echo", "queue": "high"}] + [{"task": "diag.echo"}] * 3}
    assert_queue_full(post(client, "/jobs/batch", batch))
    assert snapshot(connection) == before
    assert post(client, "/jobs/batch", {"jobs": [{"task": "diag.echo"}] * 2}).status_code == 202


@pytest.mark.slow
def test_concurrent_enqueues_never_overfill_a_lane(processes: Processes, connection: Redis) -> None:
    port = free_port()
    processes.web(port, env={"MAX_QUEUE_LENGTH": "40", "WEB_CONCURRENCY": "2"})

    def enqueue(_: int) -> int:
        body = json.dumps({"jobs": [{"task": "diag.echo"}] * 3}).encode()
        headers = {**AUTH, "Content-Type": "application/json"}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/jobs/batch", data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(enqueue, range(60)))
    assert set(statuses) == {202, 429}
    assert connection.llen("rq:queue:default") == 3 * statuses.count(202) <= 40
    assert statuses.count(202) == 13  # 13 batches of 3 fit in 40; the last slot takes no whole batch


def test_a_new_schedule_past_the_cap_is_refused_and_replacing_is_allowed(
    client: FlaskClient, connection: Redis
) -> None:
    assert client.put("/schedules/a", json=SCHEDULE, headers=AUTH).status_code == 201
    assert client.put("/schedules/b", json=SCHEDULE, headers=AUTH).status_code == 201
    before = snapshot(connection)
    refused = client.put("/schedules/c", json=SCHEDULE, headers=AUTH)
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "schedule_limit_reached"
    assert "MAX_SCHEDULES" in refused.get_json()["error"]["message"] and snapshot(connection) == before
    assert client.put("/schedules/b", json={**SCHEDULE, "cron": "0 4 * * *"}, headers=AUTH).status_code == 200
    assert client.delete("/schedules/a", headers=AUTH).status_code == 204
    assert client.put("/schedules/c", json=SCHEDULE, headers=AUTH).status_code == 201


@pytest.mark.parametrize(("option", "cap"), [("timeout", 60), ("result_ttl", 600), ("ttl", 900)])
def test_timeouts_and_ttls_are_capped(client: FlaskClient, connection: Redis, option: str, cap: int) -> None:
    assert post(client, "/jobs", {"task": "diag.echo", option: cap}).status_code == 202
    refused = post(client, "/jobs/batch", {"jobs": [{"task": "diag.echo"}, {"task": "diag.echo", option: cap + 1}]})
    assert refused.status_code == 422
    assert refused.get_json()["error"]["message"].startswith(f"jobs.1.{option}: must be at most {cap} seconds")
    assert connection.llen("rq:queue:default") == 1


def test_a_dispatch_fans_out_to_at_most_max_fanout_users(client: FlaskClient, connection: Redis) -> None:
    users = [{"id": f"u{n}", "tier": "pro"} for n in range(4)]
    refused = post(client, "/jobs", {"task": "scrape.dispatch", "args": [users]})
    assert refused.status_code == 422 and "MAX_FANOUT" in refused.get_json()["error"]["message"]
    assert refused.get_json()["error"]["message"].startswith("args:")
    assert post(client, "/jobs", {"task": "scrape.dispatch", "kwargs": {"users": users}}).status_code == 422
    as_schedule = client.put(
        "/schedules/fan", json={**SCHEDULE, "task": "scrape.dispatch", "args": [users]}, headers=AUTH
    )
    assert as_schedule.status_code == 422 and not connection.keys("svc:schedule*")
    assert post(client, "/jobs", {"task": "scrape.dispatch", "args": [users[:3]]}).status_code == 202


@pytest.mark.parametrize("path", ["/jobs?limit=501", "/schedules?limit=501", "/audit?limit=501"])
def test_page_sizes_are_capped(client: FlaskClient, path: str) -> None:
    response = client.get(path, headers=AUTH)
    assert response.status_code == 422 and response.get_json()["error"]["message"].startswith("limit:")
    assert client.get(path.replace("501", "500"), headers=AUTH).status_code == 200


def test_the_dashboard_page_size_is_capped(client: FlaskClient) -> None:
    basic = {"Authorization": "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode()}
    assert client.get("/dashboard/0/data/jobs/default/queued/501/asc/1.json", headers=basic).status_code == 404
    assert client.get("/dashboard/0/data/jobs/default/queued/200/asc/1.json", headers=basic).status_code == 200


def test_the_cli_is_held_to_the_same_limits(process_env: dict[str, str], connection: Redis) -> None:
    env = {**process_env, "MAX_QUEUE_LENGTH": "1", "MAX_JOB_TIMEOUT_SECONDS": "60"}
    runner = CliRunner()
    assert runner.invoke(cli, ["enqueue", "diag.echo"], env=env).exit_code == 0
    full = runner.invoke(cli, ["enqueue", "diag.echo"], env=env)
    assert full.exit_code == 1 and "MAX_QUEUE_LENGTH" in full.stderr
    assert connection.llen("rq:queue:default") == 1


def test_a_default_page_size_above_the_cap_is_lowered_not_refused(settings: Settings, connection: Redis) -> None:
    small = create_app(
        replace(settings, limits=Limits(page_size=2)), connection=connect(settings.redis_url, role="web")
    )
    client = small.test_client()
    for n in range(3):
        assert client.put(f"/schedules/s{n}", json=SCHEDULE, headers=AUTH).status_code == 201
    page = client.get("/schedules", headers=AUTH)
    assert page.status_code == 200 and len(page.get_json()["schedules"]) == 2 and page.get_json()["next_cursor"]
    assert client.get("/schedules?limit=3", headers=AUTH).status_code == 422
