"""Batches with real workers: the callback runs once, after every job ended, whatever happens to the workers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from redis import Redis

import tests.worker_tasks  # noqa: F401 - registers the workertest.* tasks enqueued here
from tests.api import Api
from tests.helpers import wait_until
from tests.processes import Processes
from tests.worker_fixtures import kill_group, recorded, start_worker

pytestmark = pytest.mark.slow


def batch(api: Api, jobs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    on_complete = {"task": "workertest.on_batch", "args": [key]}
    status, body = api.post("/jobs/batch", {"jobs": jobs, "on_complete": on_complete})
    assert status == 202, body
    return body


def tallies(connection: Redis, key: str) -> list[dict[str, Any]]:
    return [json.loads(v) for v in recorded(connection, key)]


def test_the_callback_runs_once_after_successes_a_failure_past_its_retries_and_a_cancel(
    client: FlaskClient, connection: Redis, processes: Processes
) -> None:
    api = Api(client)
    jobs = [{"task": "diag.echo", "args": [i]} for i in range(3)]
    jobs += [{"task": "diag.fail", "retry": {"max": 1, "backoff": [0]}}, {"task": "diag.echo", "delay": 3600}]
    body = batch(api, jobs, "tally")
    assert api.post(f"/jobs/{body['jobs'][4]['id']}/cancel")[0] == 200
    start_worker(processes, "high", "default", "low")
    wait_until(lambda: recorded(connection, "tally"), timeout=30, what="the callback")
    expected = {"id": body["batch_id"], "total": 5, "finished": 3, "failed": 1, "canceled": 1}
    assert tallies(connection, "tally") == [expected]
    assert api.job(body["jobs"][3]["id"])["attempts"] == 2  # it failed after its retry, not before
    assert api.get(f"/batches/{body['batch_id']}")[1]["pending"] == 0


def test_jobs_ending_at_the_same_instant_on_two_workers_enqueue_one_callback(
    client: FlaskClient, connection: Redis, processes: Processes
) -> None:
    api = Api(client)
    ids = [
        batch(api, [{"task": "workertest.together", "args": [f"b{n}", 2]}] * 2, "ends")["batch_id"] for n in range(20)
    ]
    start_worker(processes, "default", name="w1")
    start_worker(processes, "default", name="w2")
    wait_until(lambda: len(recorded(connection, "ends")) >= 20, timeout=60, what="20 callbacks")
    done = [t["id"] for t in tallies(connection, "ends")]
    assert sorted(done) == sorted(ids)  # each batch's callback once
    assert all(t["finished"] == 2 for t in tallies(connection, "ends"))


def test_a_job_whose_worker_died_ends_the_batch_through_the_reaper(
    client: FlaskClient, connection: Redis, processes: Processes
) -> None:
    api = Api(client)
    body = batch(api, [{"task": "diag.sleep", "args": [60]}, {"task": "diag.echo"}], "reaped")
    victim = start_worker(processes, "--crash-retries", "0", name="victim")
    wait_until(lambda: api.job(body["jobs"][0]["id"])["status"] == "started", timeout=30, what="the long job")
    start_worker(processes, "--crash-retries", "0", name="rescuer")
    kill_group(victim)
    wait_until(lambda: recorded(connection, "reaped"), timeout=60, what="the callback")
    assert tallies(connection, "reaped") == [
        {"id": body["batch_id"], "total": 2, "finished": 1, "failed": 1, "canceled": 0}
    ]
    assert "WorkerDied" in (api.job(body["jobs"][0]["id"])["error"] or "")
