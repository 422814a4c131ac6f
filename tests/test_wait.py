"""GET /jobs/<id>?wait=S: answers once the job has ended, woken through Redis, or after S seconds with the job as
it then is; a hundred open waits hold nothing else back; the CLI's --wait does the same."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from flask.testing import FlaskClient
from redis import Redis

from service.core.keys import ended_channel
from service.dev.embedded_redis import free_port
from tests.api import Answer, HttpApi
from tests.conftest import AUTH
from tests.helpers import wait_until
from tests.processes import ROOT, Processes

WAIT_SECONDS = 30


class Waiting:
    """A GET /jobs/<id>?wait= in a thread of its own: its answer and how long it took, once it returns."""

    def __init__(self, api: HttpApi, job_id: str, seconds: float = WAIT_SECONDS) -> None:
        self.job_id, self.seconds = job_id, seconds
        self.answer: Answer | None = None
        self.elapsed = 0.0
        self.thread = threading.Thread(target=self._run, args=(api,), daemon=True)
        self.thread.start()

    def _run(self, api: HttpApi) -> None:
        started = time.monotonic()
        self.answer = api.get(f"/jobs/{self.job_id}?wait={self.seconds}", timeout=self.seconds + 10)
        self.elapsed = time.monotonic() - started

    def result(self) -> Answer:
        self.thread.join(self.seconds + 15)
        assert self.answer is not None, f"the wait for {self.job_id} never answered"
        return self.answer

    def ended_before_its_deadline(self, status: str) -> bool:
        answer = self.result()
        return answer.status == 200 and answer.body["status"] == status and self.elapsed < self.seconds


def listening(redis: Redis, *job_ids: str) -> bool:
    """True once the web process listens for the end of every job in `job_ids`."""
    return all(count >= 1 for _, count in redis.pubsub_numsub(*(ended_channel(i) for i in job_ids)))


def test_a_hundred_open_waits_hold_back_no_enqueue_and_each_wakes_when_its_job_ends(
    processes: Processes, connection: Redis
) -> None:
    port = free_port()
    processes.web(port)  # one process
    api = HttpApi(port)
    ids = [api.post("/jobs", {"task": "diag.echo", "args": [n]}).body["id"] for n in range(100)]
    waits = [Waiting(api, job_id) for job_id in ids]
    wait_until(lambda: listening(connection, *ids), timeout=20, what="100 waits to be listening")

    for n in range(20):  # each must answer within a second while the hundred wait (the client gives up after 1 s)
        assert api.post("/jobs", {"task": "diag.echo", "args": ["more", n]}, timeout=1).status == 202
    assert all(w.answer is None for w in waits)  # still held open

    processes.worker()
    assert all(w.ended_before_its_deadline("finished") for w in waits)
    assert [w.result().body["result"] for w in waits] == [{"args": [n], "kwargs": {}} for n in range(100)]


def test_a_wait_ends_after_its_seconds_with_the_job_as_it_then_is(processes: Processes) -> None:
    port = free_port()
    processes.web(port)
    api = HttpApi(port)
    job = api.post("/jobs", {"task": "diag.echo", "delay": 300}).body
    started = time.monotonic()
    answer = api.get(f"/jobs/{job['id']}?wait=1.5")
    assert answer.status == 200 and answer.body["status"] == "scheduled"
    assert time.monotonic() - started >= 1.5  # it did not give up early


@pytest.mark.parametrize("wait", ["0", "0.0", "-1", "60.5", "61", "abc", "1e1", "nan", "inf", " 5", "5 ", "", "٣"])
def test_any_other_wait_is_a_422_naming_wait(client: FlaskClient, wait: str) -> None:
    job = client.post("/jobs", json={"task": "diag.echo"}, headers=AUTH).get_json()
    response = client.get(f"/jobs/{job['id']}", query_string={"wait": wait}, headers=AUTH)
    assert response.status_code == 422 and response.get_json()["error"]["message"].startswith("wait:")


def test_waits_wake_on_failed_canceled_stopped_and_deleted_jobs(processes: Processes, connection: Redis) -> None:
    port = free_port()
    processes.web(port)
    api = HttpApi(port)
    scheduled = api.post("/jobs", {"task": "diag.echo", "delay": 300}).body["id"]
    running = api.post("/jobs", {"task": "testing.hold", "args": ["held", 60]}).body["id"]
    failing = api.post("/jobs", {"task": "diag.fail", "args": ["on purpose"]}).body["id"]
    unkept = api.post("/jobs", {"task": "diag.echo", "result_ttl": 0}).body["id"]  # deleted as it finishes
    waits = {job_id: Waiting(api, job_id) for job_id in (scheduled, running, failing, unkept)}
    wait_until(lambda: listening(connection, *waits), what="the waits to be listening")
    processes.worker("--fork")
    wait_until(lambda: api.get(f"/jobs/{running}").body["status"] == "started", timeout=20)
    assert api.post(f"/jobs/{scheduled}/cancel").status == 200
    assert api.post(f"/jobs/{running}/cancel").status == 200
    assert waits[scheduled].ended_before_its_deadline("canceled")
    assert waits[running].ended_before_its_deadline("stopped")
    assert waits[failing].ended_before_its_deadline("failed")
    assert waits[failing].result().body["error"] == "RuntimeError: on purpose"
    unkept_answer = waits[unkept].result()
    assert unkept_answer.status == 404 and waits[unkept].elapsed < WAIT_SECONDS


def test_a_wait_outlives_its_listener_connection(processes: Processes, connection: Redis) -> None:
    port = free_port()
    processes.web(port)
    api = HttpApi(port)
    job_id = api.post("/jobs", {"task": "diag.echo", "delay": 300}).body["id"]
    waiting = Waiting(api, job_id)
    wait_until(lambda: listening(connection, job_id), what="the wait to be listening")
    connection.client_kill_filter(_type="pubsub")
    wait_until(lambda: listening(connection, job_id), what="the listener to subscribe again")
    assert api.post(f"/jobs/{job_id}/cancel").status == 200
    assert waiting.ended_before_its_deadline("canceled")


def test_waits_past_the_process_share_answer_at_once_and_sigterm_ends_the_held_ones(
    processes: Processes, connection: Redis
) -> None:
    port = free_port()
    web = processes.web(port, env={"WEB_THREADS": "17"})  # room for one wait: 16 threads never wait
    api = HttpApi(port)
    first, second = (api.post("/jobs", {"task": "diag.echo", "delay": 300}).body["id"] for _ in range(2))
    held = Waiting(api, first)
    wait_until(lambda: listening(connection, first), what="the first wait to be held")
    at_once = api.get(f"/jobs/{second}?wait={WAIT_SECONDS}", timeout=5)
    assert at_once.status == 200 and at_once.body["status"] == "scheduled" and at_once.headers["Retry-After"] == "1"
    assert held.answer is None
    web.signal(signal.SIGTERM)  # a deploy: the held wait answers with the job as it is, not a dropped connection
    assert held.ended_before_its_deadline("scheduled")


def cli(env: dict[str, str], *args: str) -> tuple[int, Any, str]:
    out = subprocess.run(
        [sys.executable, "-m", "service", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90
    )
    return out.returncode, json.loads(out.stdout) if out.returncode == 0 else None, out.stderr


def test_the_cli_waits_for_a_job_it_enqueues_or_names(
    processes: Processes, process_env: dict[str, str], connection: Redis
) -> None:
    processes.worker()
    code, job, _ = cli(process_env, "enqueue", "diag.echo", "7", "--wait", str(WAIT_SECONDS))
    assert code == 0 and job["status"] == "finished" and job["result"] == {"args": [7], "kwargs": {}}
    code, later, _ = cli(process_env, "enqueue", "diag.echo", "--delay", "300")
    started = time.monotonic()
    code, same, _ = cli(process_env, "job", later["id"], "--wait", "1")
    assert code == 0 and same["status"] == "scheduled" and time.monotonic() - started >= 1
    code, _, error = cli(process_env, "job", later["id"], "--wait", "0")
    assert code == 2 and "--wait" in error
