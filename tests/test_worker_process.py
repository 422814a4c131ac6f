"""worker.py as a real process: runs jobs enqueued over HTTP, honours lane order, stops warmly."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from flask.testing import FlaskClient
from redis import Redis
from rq.queue import Queue
from rq.serializers import JSONSerializer

from service.jobs.enqueue import enqueue
from service.jobs.schemas import JobRequest
from tests.conftest import AUTH
from tests.helpers import wait_until
from tests.processes import Processes

JSON = {**AUTH, "Content-Type": "application/json"}


def job_status(client: FlaskClient, job_id: str) -> dict[str, object]:
    return client.get(f"/jobs/{job_id}", headers=AUTH).get_json()


def test_job_enqueued_over_http_runs_on_a_real_worker(client: FlaskClient, processes: Processes) -> None:
    processes.worker("high", "default", "low")
    job_id = client.post("/jobs", data=json.dumps({"task": "diag.echo", "args": [1]}), headers=JSON).get_json()["id"]
    job = wait_until(lambda: (j := job_status(client, job_id))["status"] == "finished" and j, timeout=20)
    assert job["result"] == {"args": [1], "kwargs": {}}
    assert job["attempts"] == 1
    assert job["started_at"] <= job["ended_at"]


def test_failed_job_reads_failed_with_its_error(client: FlaskClient, processes: Processes) -> None:
    processes.worker()
    body = {"task": "diag.fail", "kwargs": {"message": "disk on fire"}}
    job_id = client.post("/jobs", data=json.dumps(body), headers=JSON).get_json()["id"]
    job = wait_until(lambda: (j := job_status(client, job_id))["status"] == "failed" and j, timeout=20)
    assert job["error"] == "RuntimeError: disk on fire"
    assert job["result"] is None


def test_high_job_enqueued_after_twenty_low_ones_runs_first(connection: Redis, processes: Processes) -> None:
    blocker = enqueue(connection, JobRequest(task="diag.sleep", args=[1.5], queue="default"))
    processes.worker("high", "default", "low")
    wait_until(lambda: blocker.get_status(refresh=True) == "started", timeout=20, what="the worker to be busy")
    for i in range(20):
        enqueue(connection, JobRequest(task="diag.record", args=["order", f"low-{i}"], queue="low"))
    enqueue(connection, JobRequest(task="diag.record", args=["order", "high"], queue="high"))
    wait_until(lambda: connection.llen("diag:order") == 21, timeout=30)
    order = [v.decode() for v in connection.lrange("diag:order", 0, -1)]
    assert order == ["high"] + [f"low-{i}" for i in range(20)]


def test_sigterm_lets_the_running_job_finish_then_exits(connection: Redis, processes: Processes) -> None:
    job = enqueue(connection, JobRequest(task="diag.sleep", args=[2]))
    worker = processes.worker()
    wait_until(lambda: job.get_status(refresh=True) == "started", timeout=20)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert job.get_status(refresh=True) == "finished"


def test_planted_job_naming_an_unregistered_function_is_not_run(
    connection: Redis, processes: Processes, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    queue = Queue("default", connection=connection, serializer=JSONSerializer)
    planted = queue.enqueue_call("os.system", args=[f"touch {marker}"])
    processes.worker()
    wait_until(lambda: planted.get_status(refresh=True) == "failed", timeout=20)
    assert not marker.exists()
    assert "not a registered task" in (planted.latest_result().exc_string or "")
