"""Job options carried through real worker processes: retries, ttl, dependencies, cancel, stop, requeue."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask.testing import FlaskClient

from service import create_app
from service.core.config import Settings
from service.core.connection import WEB_TIMEOUT_SECONDS, connect
from service.dev.embedded_redis import EmbeddedRedis
from tests.api import Api
from tests.conftest import TOKEN
from tests.helpers import wait_until
from tests.processes import Processes


@pytest.fixture
def api(client: FlaskClient) -> Api:
    return Api(client)


def wait_status(api: Api, job_id: str, status: str, timeout: float = 30) -> dict[str, Any]:
    return wait_until(lambda: (j := api.job(job_id))["status"] == status and j, timeout=timeout, what=status)


def test_retry_with_backoff_finishes_a_task_that_fails_twice(api: Api, processes: Processes) -> None:
    processes.worker()
    job = api.enqueue(task="testing.flaky", args=["r1", 2], retry={"max": 3, "backoff": [1, 1]})
    done = wait_status(api, job["id"], "finished")
    assert done["attempts"] == 3
    assert done["result"] == 3


def test_retries_run_out_and_the_job_fails_with_its_error(api: Api, processes: Processes) -> None:
    processes.worker()
    job = api.enqueue(task="testing.flaky", args=["r2", 5], retry={"max": 1, "backoff": [0]})
    failed = wait_status(api, job["id"], "failed")
    assert failed["attempts"] == 2
    assert failed["error"] == "RuntimeError: failure 2 of 5"


def test_delayed_job_does_not_start_before_its_time(api: Api, processes: Processes) -> None:
    processes.worker()
    asked = time.time()
    job = api.enqueue(task="diag.echo", delay=1.5)
    done = wait_status(api, job["id"], "finished")
    from datetime import datetime

    assert datetime.fromisoformat(done["started_at"]).timestamp() >= asked + 1.5


def test_ttl_discards_a_job_not_started_in_time(api: Api, processes: Processes) -> None:
    job = api.enqueue(task="diag.record", args=["ttl", "ran"], ttl=1)
    wait_until(lambda: _past(job, 1.2), timeout=5, what="the ttl to run out before any worker starts")
    processes.worker()
    discarded = wait_status(api, job["id"], "failed")
    assert "ttl" in discarded["error"]
    assert discarded["attempts"] == 1
    assert api.client.application.extensions["redis"].llen("diag:ttl") == 0


def _past(job: dict[str, Any], seconds: float) -> bool:
    from datetime import datetime

    return time.time() > datetime.fromisoformat(job["enqueued_at"]).timestamp() + seconds


def test_dependent_job_runs_after_its_parent(api: Api, processes: Processes) -> None:
    parent = api.enqueue(task="diag.sleep", args=[0.5])
    child = api.enqueue(task="diag.echo", args=["child"], depends_on=[parent["id"]])
    assert child["status"] == "deferred"
    processes.worker()
    child_done = wait_status(api, child["id"], "finished")
    assert child_done["started_at"] >= api.job(parent["id"])["ended_at"]


def test_job_depending_on_a_finished_job_is_queued_at_once(api: Api, processes: Processes) -> None:
    processes.worker()
    parent = api.enqueue(task="diag.echo")
    wait_status(api, parent["id"], "finished")
    child = api.enqueue(task="diag.echo", depends_on=[parent["id"]])
    assert child["status"] in ("queued", "started", "finished")
    wait_status(api, child["id"], "finished")


def test_failed_parent_leaves_the_child_deferred_and_listed(api: Api, processes: Processes) -> None:
    processes.worker()
    parent = api.enqueue(task="diag.fail")
    child = api.enqueue(task="diag.echo", depends_on=[parent["id"]])
    wait_status(api, parent["id"], "failed")
    assert api.job(child["id"])["status"] == "deferred"
    status, page = api.get("/jobs?status=deferred")
    assert status == 200 and child["id"] in [j["id"] for j in page["jobs"]]


def test_cancel_stops_a_running_job(api: Api, processes: Processes) -> None:
    processes.worker()
    job = api.enqueue(task="diag.sleep", args=[30])
    wait_status(api, job["id"], "started")
    status, stopped = api.post(f"/jobs/{job['id']}/cancel")
    assert status == 200
    assert wait_status(api, job["id"], "stopped", timeout=10)["status"] == "stopped"
    status, error = api.post(f"/jobs/{job['id']}/cancel")
    assert (status, error["error"]["code"]) == (409, "conflict")


def test_requeue_brings_a_failed_job_back(api: Api, processes: Processes) -> None:
    processes.worker()
    job = api.enqueue(task="testing.flaky", args=["rq", 1])
    wait_status(api, job["id"], "failed")
    status, requeued = api.post(f"/jobs/{job['id']}/requeue")
    assert status == 200 and requeued["status"] in ("queued", "started", "finished")
    done = wait_status(api, job["id"], "finished")
    assert done["attempts"] == 2
    status, error = api.post(f"/jobs/{job['id']}/requeue")
    assert (status, error["error"]["code"]) == (409, "conflict")


def test_workers_endpoint_shows_a_live_worker(api: Api, processes: Processes) -> None:
    processes.worker("high", "low", name="w")
    workers = wait_until(lambda: api.get("/workers")[1]["workers"], timeout=20)
    worker = workers[0]
    assert set(worker["lanes"]) == {"high", "low"}
    assert worker["state"] in ("idle", "busy", "started")
    assert worker["last_heartbeat"].endswith("Z")


def test_dispatcher_fans_out_one_scrape_per_user_in_the_tier_lane(api: Api, processes: Processes) -> None:
    processes.worker()
    users = [{"id": "u1", "tier": "enterprise"}, {"id": "u2", "tier": "free"}, {"id": "u3", "tier": "pro"}]
    dispatcher = api.enqueue(task="scrape.dispatch", args=[users])
    children = wait_status(api, dispatcher["id"], "finished")["result"]
    assert [api.job(c)["queue"] for c in children] == ["high", "low", "default"]
    for child in children:
        wait_status(api, child, "finished")


def test_batch_written_jobs_run_on_a_real_worker(api: Api, processes: Processes) -> None:
    parent = api.enqueue(task="diag.sleep", args=[0.3])
    bodies = [
        {"task": "diag.echo", "args": [1, {"two": 2}], "kwargs": {"three": [3]}},
        {"task": "diag.record", "args": ["batch", "high"], "queue": "high"},
        {"task": "diag.record", "args": ["batch", "low"], "queue": "low", "retry": {"max": 2}},
        {"task": "diag.echo", "args": ["later"], "delay": 1},
        {"task": "diag.echo", "args": ["child"], "depends_on": [parent["id"]]},
    ]
    status, answer = api.post("/jobs/batch", {"jobs": bodies})
    assert status == 202
    processes.worker("high", "default", "low")
    done = [wait_status(api, job["id"], "finished") for job in answer["jobs"]]
    assert done[0]["result"] == {"args": [1, {"two": 2}], "kwargs": {"three": [3]}}
    assert sorted(job["result"] for job in done[1:3]) == [1, 2]
    assert done[3]["result"] == {"args": ["later"], "kwargs": {}}
    assert done[4]["started_at"] >= api.job(parent["id"])["ended_at"]
    assert all(job["attempts"] == 1 and job["enqueued_at"] for job in done)


def test_listing_workers_keeps_the_web_clients_timeouts(private_redis: EmbeddedRedis, processes: Processes) -> None:
    """RQ's Worker raises its client's socket timeout to 415 s; GET /workers must not do that to the web's client."""
    web_client = connect(private_redis.url, role="web")
    app = create_app(Settings(redis_url=private_redis.url, api_tokens=(TOKEN,)), connection=web_client)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    processes.worker(name="w", env={"REDIS_URL": private_redis.url})
    wait_until(lambda: client.get("/workers", headers=headers).get_json()["workers"], timeout=20, what="a worker")
    assert web_client.connection_pool.connection_kwargs["socket_timeout"] == WEB_TIMEOUT_SECONDS
    private_redis.freeze()
    try:
        response = client.get("/queues", headers=headers)  # answers (503) instead of hanging on the frozen Redis
        assert (response.status_code, response.get_json()["error"]["code"]) == (503, "redis_unavailable")
    finally:
        private_redis.thaw()
