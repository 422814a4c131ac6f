"""Parity with stock RQ as a user's tools see it: real worker processes, GET /workers, `rq info` and the dashboard.

A stock `rq worker -w rq.SimpleWorker` and a service `worker.py` run side by
side on one Redis (each on its own lane); every tool must report the same
state and current job for both, while a job runs and after it. Stopping a
running job (RQ's send_stop_job_command) must leave what a stock forking
worker leaves, and `rq suspend` must hold the service's workers as it holds
RQ's.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue
from rq.command import send_stop_job_command
from rq.serializers import JSONSerializer

from service.jobs.model import ServiceJob
from tests import parity_tasks
from tests.api import Api
from tests.helpers import wait_until
from tests.parity import ALWAYS, DASHBOARD_AUTH, Labels, differences, readback, snapshot, unexpected
from tests.processes import ROOT, Processes, ServiceProcess
from tests.worker_fixtures import FAST

RQ = str(Path(sys.executable).parent / "rq")
TASKS = {"TASK_MODULES": "tests.parity_tasks"}
STOCK, OURS = "stock-worker", "service-worker"
WORKER = "parity-worker"

pytestmark = pytest.mark.slow


@pytest.fixture
def api(client: FlaskClient) -> Api:
    return Api(client)


def stock_worker(processes: Processes, url: str, name: str, lane: str, *args: str) -> ServiceProcess:
    """A stock RQ worker process (JSON serializer), importing the parity tasks by path."""
    command = [RQ, "worker", "-u", url, "-S", "json", "--path", str(ROOT), "-n", name, *args, lane]
    return processes.start(name, *command)


def status(connection: Redis, job_id: str) -> str:
    return ServiceJob.fetch(job_id, connection=connection).get_status(refresh=True).value


def rq_info(url: str) -> dict[str, dict[str, str]]:
    """`rq info -W --raw`, the real command: per worker, its state and counts."""
    out = subprocess.run([RQ, "info", "-u", url, "-W", "--raw"], capture_output=True, text=True, check=True).stdout
    found = re.findall(r"^worker (\S+) \(.*\) (\S+) \S+\. jobs: (\d+) finished, (\d+) failed$", out, re.M)
    return {name: {"state": state, "finished": done, "failed": failed} for name, state, done, failed in found}


def api_workers(api: Api, jobs: dict[str, str]) -> dict[str, dict[str, Any]]:
    """GET /workers: per worker, state, current job (as '<job>') and counts."""
    code, body = api.get("/workers")
    assert code == 200, body
    return {
        w["name"]: {
            "state": w["state"],
            "current_job": "<job>" if w["current_job"] in jobs.values() else w["current_job"],
            "successful_jobs": w["successful_jobs"],
            "failed_jobs": w["failed_jobs"],
            "working": w["total_working_seconds"] > 0,
        }
        for w in body["workers"]
    }


def dashboard_workers(client: FlaskClient, jobs: dict[str, str]) -> dict[str, Any]:
    """rq-dashboard's workers.json: its HTTP status, and per worker its state and current job."""
    response = client.get("/dashboard/0/data/workers.json", headers=DASHBOARD_AUTH)
    if response.status_code != 200:
        return {"HTTP status": response.status_code}
    workers = {}
    for w in response.get_json()["workers"]:
        current = w["current_job"]
        job = current if current == "idle" else ("<job>" if current.get("job_id") in jobs.values() else current)
        workers[w["name"]] = {"state": w["state"], "current_job": job, "finished": w["successful_job_count"]}
    return {"HTTP status": 200, **workers}


def reports(api: Api, client: FlaskClient, url: str, jobs: dict[str, str]) -> dict[str, dict[str, Any]]:
    """What each tool says about each worker, by worker."""
    tools = {"GET /workers": api_workers(api, jobs), "rq info": rq_info(url)}
    dashboard = dashboard_workers(client, jobs)
    return {
        worker: {**{tool: seen.get(worker) for tool, seen in tools.items()}, "dashboard": dashboard.get(worker)}
        for worker in (STOCK, OURS)
    } | {"dashboard HTTP status": dashboard["HTTP status"]}  # type: ignore[dict-item]


def test_every_tool_reports_the_same_worker_state_and_current_job_as_for_stock_rq(
    connection: Redis, processes: Processes, api: Api, client: FlaskClient, redis_url: str
) -> None:
    stock_worker(processes, redis_url, STOCK, "low", "-w", "rq.SimpleWorker")
    processes.worker("default", "--name", OURS, *FAST, env=TASKS)
    wait_until(lambda: {STOCK, OURS} <= set(rq_info(redis_url)), timeout=30, what="both workers to register")
    stock_job = Queue("low", connection=connection, serializer=JSONSerializer).enqueue_call(
        parity_tasks.hold, args=["release:stock"]
    )
    jobs = {STOCK: stock_job.id, OURS: api.enqueue(task="parity.hold", args=["release:ours"], queue="default")["id"]}
    wait_until(lambda: all(status(connection, j) == "started" for j in jobs.values()), timeout=30, what="both jobs")
    # Ours writes RQ's execution records (which rq-dashboard's current job reads) at the job's first beat.
    records = f"rq:worker:{OURS}:executions"
    wait_until(lambda: connection.exists(records), timeout=30, what="our execution records (first beat)")

    running = reports(api, client, redis_url, jobs)
    assert running[OURS] == running[STOCK]
    assert running[OURS]["GET /workers"]["state"] == "busy"
    assert running[OURS]["GET /workers"]["current_job"] == "<job>"
    assert running[OURS]["rq info"]["state"] == "busy"

    connection.rpush("release:stock", 1)
    connection.rpush("release:ours", 1)
    wait_until(lambda: rq_info(redis_url)[STOCK]["state"] == "idle", timeout=30, what="the stock worker to be idle")
    wait_until(lambda: status(connection, jobs[OURS]) == "finished", timeout=30, what="our job to finish")

    after = reports(api, client, redis_url, jobs)
    assert after[OURS] == after[STOCK]
    assert after[OURS]["GET /workers"] == {
        "state": "idle", "current_job": None, "successful_jobs": 1, "failed_jobs": 0, "working": True
    }  # fmt: skip
    assert after[OURS]["dashboard"] == {"state": "idle", "current_job": "idle", "finished": 1}
    assert after["dashboard HTTP status"] == 200


def run_and_stop(connection: Redis, worker: ServiceProcess, job_id: str) -> None:
    wait_until(lambda: status(connection, job_id) == "started", timeout=30, what="the job to start")
    send_stop_job_command(connection, job_id, serializer=JSONSerializer)
    worker.wait(timeout=30)


# A stopped job: what the service leaves differently from RQ's forking worker, and why.
STOPPED: dict[tuple[str, str], str] = {
    **ALWAYS,
    # RQ's fork path stores the parent's copy of the job, read before the horse
    # started it: its worker_name, end time and heartbeat are blank.
    ("rq:job:<job>", "worker_name"): "the service keeps who ran the job; RQ's fork path saves a stale copy",
    ("rq:job:<job>", "ended_at"): "the service keeps when the job ended; RQ's fork path saves a stale copy",
    ("rq:job:<job>", "last_heartbeat"): "the service keeps the last heartbeat; RQ's fork path saves a stale copy",
    ("rq:job:<job>", "* <= *"): "times RQ's fork path leaves blank cannot be ordered",
    ("Job.fetch <job>", "worker_name"): "the service keeps who ran the job; RQ's fork path saves a stale copy",
    ("Job.fetch <job>", "times.*"): "the service keeps the job's times; RQ's fork path saves a stale copy",
    ("dashboard *", "*started_at"): "the service keeps the job's times; RQ's fork path saves a stale copy",
    ("dashboard *", "*ended_at"): "the service keeps the job's times; RQ's fork path saves a stale copy",
    ("rq:results:<job>", "0.execution_*ended_at"): "the service records when the stopped run ended",
    ("rq:worker:<worker>", "total_working_time"): "the service counts a stopped job's working time",
    # Without a fork there is no horse to kill: the stop is raised inside the job.
    ("rq:results:<job>", "0.exc_string"): "no fork: the stop is an exception raised inside the running job",
    ("Job.fetch <job>", "latest_result.exc"): "no fork: the stop is an exception raised inside the running job",
    ("dashboard *", "*exc_info"): "no fork: the stop is an exception raised inside the running job",
}


@pytest.mark.parametrize("fork", [False, True], ids=["no fork", "fork"])
def test_stopping_a_running_job_leaves_what_stock_rqs_forking_worker_leaves(
    connection: Redis, processes: Processes, api: Api, client: FlaskClient, redis_url: str, fork: bool
) -> None:
    queue = Queue("default", connection=connection, serializer=JSONSerializer)
    stock_job = queue.enqueue_call(parity_tasks.hold, args=["never"], result_ttl=500, failure_ttl=7 * 24 * 3600)
    run_and_stop(connection, stock_worker(processes, redis_url, WORKER, "default", "--burst"), stock_job.id)
    stock = observe(connection, client, stock_job.id)

    connection.flushdb()
    job_id = api.enqueue(task="parity.hold", args=["never"], queue="default")["id"]
    mode = "--fork" if fork else "--no-fork"
    worker = processes.worker("default", "--burst", mode, "--no-scheduler", "--name", WORKER, *FAST, env=TASKS)
    run_and_stop(connection, worker, job_id)
    ours = observe(connection, client, job_id)

    assert stock[("rq:job:<job>", "status")] == ours[("rq:job:<job>", "status")] == "stopped"
    assert unexpected(differences(stock, ours), STOPPED) == {}


# A running job: what the service keeps differently from rq.SimpleWorker, and why.
RUNNING: dict[tuple[str, str], str] = {
    **ALWAYS,
    # RQ gives these keys the job's timeout + 60 s once; the service's heartbeat
    # thread renews them every few seconds for 4 heartbeats + 60 s.
    ("rq:worker:<worker>", "ttl"): "renewed by the heartbeat thread, not set once for the job's timeout",
    ("rq:worker:<worker>:executions", "ttl"): "renewed by the heartbeat thread, not set once for the job's timeout",
    ("rq:execution:<job>:<exec>", "ttl"): "renewed by the heartbeat thread, not set once for the job's timeout",
    ("rq:executions:<job>", "*"): "renewed by the heartbeat thread, not set once for the job's timeout",
    ("rq:wip:default", "<job>:<exec>"): "renewed by the heartbeat thread, not set once for the job's timeout",
    # The service's own keys: a worker's claimed jobs, the workers that hold
    # claims, and each worker's liveness (the reaper's inputs).
    ("svc:claimed:<worker>", "*"): "the worker's claimed list: a killed worker's job is found and redelivered",
    ("svc:claimers", "*"): "the workers holding claims, for the reaper",
    ("svc:alive:<worker>", "*"): "the worker's liveness key, for the reaper",
}


def test_a_running_job_is_stored_as_rqs_simple_worker_stores_it(
    connection: Redis, processes: Processes, api: Api, client: FlaskClient, redis_url: str
) -> None:
    queue = Queue("default", connection=connection, serializer=JSONSerializer)
    stock_job = queue.enqueue_call(parity_tasks.hold, args=["release"], result_ttl=500, failure_ttl=7 * 24 * 3600)
    worker = stock_worker(processes, redis_url, WORKER, "default", "--burst", "-w", "rq.SimpleWorker")
    stock = observe_running(connection, client, stock_job.id, worker)

    connection.flushdb()
    job_id = api.enqueue(task="parity.hold", args=["release"], queue="default")["id"]
    worker = processes.worker("default", "--burst", "--no-fork", "--no-scheduler", "--name", WORKER, *FAST, env=TASKS)
    # The service defers RQ's execution records (execution hash, executions registry, worker executions
    # set) to the running job's first heartbeat: a job shorter than a beat never has them. Observed once written.
    ours = observe_running(connection, client, job_id, worker, records=f"rq:worker:{WORKER}:executions")

    assert ours[("rq:worker:<worker>", "state")] == "busy"
    assert ours[("rq:worker:<worker>:executions", "members")] == ["<job>:<exec>"]
    assert unexpected(differences(stock, ours), RUNNING) == {}


def observe_running(
    connection: Redis, client: FlaskClient, job_id: str, worker: ServiceProcess, records: str | None = None
) -> dict[tuple[str, str], Any]:
    """The state while `job_id` runs (once the worker executions set `records` exists, if given); then the
    job is released and its burst worker exits."""
    wait_until(lambda: status(connection, job_id) == "started", timeout=30, what="the job to start")
    if records:
        wait_until(lambda: connection.exists(records), timeout=30, what="the execution records (first beat)")
    seen = observe(connection, client, job_id)
    connection.rpush("release", 1)
    assert worker.wait(timeout=30) == 0  # gone before the next side's jobs arrive
    assert status(connection, job_id) == "finished"
    return seen


def observe(connection: Redis, client: FlaskClient, job_id: str) -> dict[tuple[str, str], Any]:
    labels = Labels({job_id: "<job>"})
    return {**snapshot(connection, labels, WORKER), **readback(connection, client, labels, {"<job>": job_id})}


def test_rq_suspend_holds_the_service_worker_and_rq_resume_releases_it(
    connection: Redis, processes: Processes, api: Api, redis_url: str
) -> None:
    processes.worker("default", "--name", OURS, *FAST, env=TASKS)
    wait_until(lambda: rq_info(redis_url).get(OURS, {}).get("state") == "idle", timeout=30, what="an idle worker")
    subprocess.run([RQ, "suspend", "-u", redis_url], check=True, capture_output=True)
    wait_until(lambda: rq_info(redis_url)[OURS]["state"] == "suspended", timeout=30, what="the worker to suspend")
    assert api_workers(api, {})[OURS]["state"] == "suspended"

    job_id = api.enqueue(task="parity.ok", args=[1], queue="default")["id"]
    beats: list[bytes | None] = []

    def two_more_heartbeats() -> bool:
        beat = connection.hget(f"rq:worker:{OURS}", "last_heartbeat")
        if not beats or beats[-1] != beat:
            beats.append(beat)
        return len(beats) >= 3

    # A suspended worker still checks in: two new heartbeats after the
    # enqueue prove it stayed up, with the job in its lane, and left it there.
    wait_until(two_more_heartbeats, timeout=30, what="two more heartbeats")
    assert status(connection, job_id) == "queued"

    subprocess.run([RQ, "resume", "-u", redis_url], check=True, capture_output=True)
    wait_until(lambda: status(connection, job_id) == "finished", timeout=30, what="the job to run after resume")
    wait_until(lambda: rq_info(redis_url)[OURS]["state"] == "idle", timeout=30, what="the worker to be idle")


def test_a_suspended_worker_stops_on_sigterm_without_taking_a_job(
    connection: Redis, processes: Processes, api: Api, redis_url: str
) -> None:
    worker = processes.worker("default", "--name", OURS, *FAST, env=TASKS)
    subprocess.run([RQ, "suspend", "-u", redis_url], check=True, capture_output=True)
    wait_until(lambda: rq_info(redis_url).get(OURS, {}).get("state") == "suspended", timeout=30, what="suspended")
    job_id = api.enqueue(task="parity.ok", args=[1], queue="default")["id"]
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert status(connection, job_id) == "queued"


def test_a_long_job_keeps_its_worker_current_job_visible(
    connection: Redis, processes: Processes, api: Api, redis_url: str
) -> None:
    # RQ reads a worker's current job from rq:worker:<name>:executions; the
    # claim gives it a TTL, and the heartbeat must renew it for as long as
    # the job runs (it used to expire 140 s into a no-fork job).
    processes.worker("default", "--no-fork", "--name", OURS, *FAST, env=TASKS)
    job_id = api.enqueue(task="parity.hold", args=["release:long"], queue="default")["id"]
    wait_until(lambda: status(connection, job_id) == "started", timeout=30, what="the job to start")
    key = f"rq:worker:{OURS}:executions"
    readings = [connection.pttl(key)]

    def renewed() -> bool:
        readings.append(connection.pttl(key))
        return readings[-1] > readings[-2] > 0

    wait_until(renewed, timeout=30, what="the heartbeat to renew the executions set's TTL")
    assert api_workers(api, {OURS: job_id})[OURS]["current_job"] == "<job>"
    connection.rpush("release:long", 1)
    wait_until(lambda: status(connection, job_id) == "finished", timeout=30, what="the job to finish")
