"""The dashboard reads whatever Redis holds without unpickling it or failing, and works while jobs run."""

from __future__ import annotations

import base64
import os
import pickle
import re
import zlib
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from rq.serializers import DefaultSerializer

from service.core.lanes import LANES
from service.dashboard.origin import STATE_CHANGING_ENDPOINTS
from tests.api import Api
from tests.conftest import AUTH
from tests.helpers import wait_until
from tests.processes import Processes
from tests.test_dashboard import GOOD, SAME_ORIGIN

REGISTRIES = ("queued", "scheduled", "deferred", "started", "finished", "failed", "canceled")
# Fields RQ 3.0.0 restores from a job hash (Job.restore) and the service's own, beyond the ones every job has.
EXTRA_JOB_FIELDS = (
    "result", "exc_info", "meta", "dependency_ids", "dependency_id", "allow_dependency_failures", "enqueue_at_front",
    "ttl", "number_of_retries", "retries_left", "retry_intervals", "enqueue_at_front_on_retry", "repeats_left",
    "repeat_intervals", "rate_limit_key", "rate_limit_concurrency", "webhooks", "success_callback_timeout",
    "failure_callback_timeout", "stopped_callback_timeout", "attempts", "crashes",
)  # fmt: skip
WORKER_FIELDS = (
    "birth", "last_heartbeat", "queues", "pid", "hostname", "ip_address", "version", "python_version", "state",
    "successful_job_count", "failed_job_count", "total_working_time", "current_job",
)  # fmt: skip


def booby_trapped_pickle(marker: Path) -> bytes:
    """A real pickle whose loading creates the directory `marker`: proof that something unpickled it."""

    class Trap:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.mkdir, (str(marker),))

    return pickle.dumps(Trap())


def plant_jobs(api: Api, connection: Redis, trap: bytes) -> list[str]:
    """Jobs with the pickle in one field each, one with it in every field; all in a lane, a registry, a stream."""
    job_ids = []
    fields = [f.decode() for f in connection.hkeys(f"rq:job:{api.enqueue(task='diag.echo')['id']}")]
    for field in [*dict.fromkeys([*fields, *EXTRA_JOB_FIELDS]), None]:
        job_id = api.enqueue(task="diag.echo", args=["planted"])["id"]
        key = f"rq:job:{job_id}"
        connection.hset(key, mapping={f: trap for f in (fields + list(EXTRA_JOB_FIELDS) if field is None else [field])})
        connection.zadd("rq:failed:default", {job_id: 9_999_999_999})
        connection.zadd("rq:finished:default", {job_id: 9_999_999_999})
        # The latest result: a pickled return value, or a pickled exception string.
        connection.xadd(f"rq:results:{job_id}", {"type": 2, "exc_string": base64.b64encode(zlib.compress(trap))})
        if len(job_ids) % 2:
            connection.xadd(f"rq:results:{job_id}", {"type": 1, "return_value": base64.b64encode(trap)})
        job_ids.append(job_id)
    return job_ids


def plant_workers(connection: Redis, trap: bytes, job_ids: list[str]) -> None:
    """A worker hash all pickle, and workers whose current execution is all pickle or points at a planted job."""
    sane = {"birth": "2026-01-01T00:00:00.000000Z", "last_heartbeat": "2026-01-01T00:00:00.000000Z",
            "queues": "default", "pid": "1", "hostname": "h", "state": "busy"}  # fmt: skip
    workers = {"trapped": {f: trap for f in WORKER_FIELDS}, "trapped-execution": sane, "trapped-job": sane}
    for name, fields in workers.items():
        connection.hset(f"rq:worker:{name}", mapping=fields)
        connection.sadd("rq:workers", f"rq:worker:{name}")
        connection.sadd("rq:workers:default", f"rq:worker:{name}")
    connection.sadd("rq:worker:trapped-execution:executions", f"{job_ids[0]}:e1")
    connection.hset(f"rq:execution:{job_ids[0]}:e1", mapping={f: trap for f in ("job_id", "created_at")})
    connection.sadd("rq:worker:trapped-job:executions", f"{job_ids[-1]}:e2")
    connection.hset(f"rq:execution:{job_ids[-1]}:e2", mapping={"created_at": 1.0, "last_heartbeat": 1.0})


def dashboard_urls(app: Flask, method: str, job_ids: list[str]) -> list[tuple[str, str]]:
    """Every /dashboard route that takes `method`, with its parameters filled in every way that matters."""
    values: dict[str, list[Any]] = {
        "instance_number": [0], "job_id": job_ids, "queue_name": list(LANES), "registry_name": list(REGISTRIES),
        "per_page": [8], "order": ["asc"], "page": [1], "schedule_id": ["nightly"], "action": ["pause"],
    }  # fmt: skip
    files = {"rq_dashboard.static": "js/jquery-3.5.1.min.js", "dashboard_charts.static": "charts.js"}
    urls = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/dashboard") or method not in (rule.methods or ()):
            continue
        values["filename"] = [files.get(rule.endpoint)]
        filled = [rule.rule]
        for name in rule.arguments:
            pattern = re.compile(rf"<(?:[a-z]+:)?{name}>")
            filled = [pattern.sub(str(v), url) for url in filled for v in values[name]]
        urls.extend((rule.endpoint, url) for url in filled)
    assert len(urls) > (20 if method == "GET" else 10)
    return urls


def test_no_dashboard_route_unpickles_or_fails_on_planted_pickles(
    app: Flask, client: FlaskClient, connection: Redis, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    trap = booby_trapped_pickle(marker)
    api = Api(client)
    client.put("/schedules/nightly", json={"task": "diag.echo", "cron": "0 3 * * *"}, headers=AUTH)
    job_ids = plant_jobs(api, connection, trap)
    plant_workers(connection, trap, job_ids)

    for endpoint, url in dashboard_urls(app, "GET", job_ids):
        expected = 405 if endpoint in STATE_CHANGING_ENDPOINTS else 200  # requeue-all: POST only
        with client.get(url, headers=GOOD, follow_redirects=True) as response:
            assert response.status_code == expected, (url, response.get_data(as_text=True)[:300])
    workers = {w["name"]: w for w in client.get("/dashboard/0/data/workers.json", headers=GOOD).get_json()["workers"]}
    assert workers["trapped"]["state"] == "unreadable"
    assert workers["trapped-job"]["current_job"]["call_string"].startswith("unreadable")
    shown = client.get(f"/dashboard/0/data/job/{job_ids[-1]}.json", headers=GOOD).get_json()
    assert shown["status"] == "unreadable" and shown["description"].startswith("unreadable")
    for _, url in dashboard_urls(app, "POST", job_ids):
        response = client.post(url, headers=SAME_ORIGIN)
        assert response.status_code in (200, 303, 404, 409), (url, response.get_data(as_text=True)[:300])
    assert not any(connection.exists(f"rq:job:{job_id}") for job_id in job_ids)  # deleted, unreadable or not
    assert not marker.exists()


def test_the_web_process_never_loads_a_pickle(app: Flask, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    with pytest.raises(Exception, match="never loaded"):
        DefaultSerializer.loads(booby_trapped_pickle(marker))
    assert not marker.exists()


def job_shown(client: FlaskClient, job_id: str) -> dict[str, Any]:
    """The job page's data, after checking that the page itself loads."""
    assert client.get(f"/dashboard/0/view/job/{job_id}", headers=GOOD).status_code == 200
    response = client.get(f"/dashboard/0/data/job/{job_id}.json", headers=GOOD)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def listed(client: FlaskClient, registry: str, lane: str = "default") -> list[str]:
    response = client.get(f"/dashboard/0/data/jobs/{lane}/{registry}/50/asc/1.json", headers=GOOD)
    assert response.status_code == 200, response.get_data(as_text=True)
    return [job["id"] for job in response.get_json()["jobs"]]


@pytest.mark.slow
def test_workers_page_shows_a_busy_worker_with_its_current_job(client: FlaskClient, processes: Processes) -> None:
    processes.worker()
    api = Api(client)
    job = api.enqueue(task="diag.sleep", args=[30])
    wait_until(lambda: api.job(job["id"])["status"] == "started", timeout=20, what="the job to start")

    response = client.get("/dashboard/0/data/workers.json", headers=GOOD)
    assert response.status_code == 200, response.get_data(as_text=True)
    (worker,) = response.get_json()["workers"]
    assert worker["state"] == "busy"
    assert worker["current_job"]["job_id"] == job["id"] and worker["current_job"]["call_string"] == "diag.sleep(30)"
    assert client.get("/dashboard/0/view/workers", headers=GOOD).status_code == 200
    assert job_shown(client, job["id"])["status"] == "started" and job["id"] in listed(client, "started")
    assert api.post(f"/jobs/{job['id']}/cancel")[0] == 200


@pytest.mark.slow
def test_job_pages_work_for_every_kind_of_job(client: FlaskClient, processes: Processes) -> None:
    api = Api(client)
    finished = api.enqueue(task="diag.echo", args=["done"])["id"]
    failed = api.enqueue(task="diag.fail", kwargs={"message": "it broke"})["id"]
    child = api.enqueue(task="diag.echo", args=["child"], depends_on=[finished])["id"]
    canceled = api.enqueue(task="diag.echo", delay=3600)["id"]
    assert api.post(f"/jobs/{canceled}/cancel")[0] == 200
    client.put("/schedules/nightly", json={"task": "diag.echo", "cron": "0 3 * * *"}, headers=AUTH)
    status, run = api.post("/schedules/nightly/run")
    assert status == 202, run
    processes.worker()
    ended = (finished, failed, child, run["id"])
    wait_until(lambda: all(api.job(j)["status"] in ("finished", "failed") for j in ended), timeout=30, what="runs")

    assert job_shown(client, finished)["result"] == {"args": ["done"], "kwargs": {}}
    assert "it broke" in job_shown(client, failed)["exc_info"]
    shown_child = job_shown(client, child)
    assert shown_child["depends_on"] == [finished] and shown_child["depends_on_status"] == ["active"]
    assert job_shown(client, canceled)["status"] == "canceled"
    shown_run = job_shown(client, run["id"])
    assert shown_run["status"] == "finished" and '"schedule_id": "nightly"' in shown_run["metadata"]
    assert {finished, child, run["id"]} <= set(listed(client, "finished"))
    assert failed in listed(client, "failed") and canceled in listed(client, "canceled")
