"""What the worker writes later than RQ would, to cut its Redis work per job (docs/workers.md "Per-job Redis work").

RQ's execution records are written by the heartbeat for a job still running
at its next beat, the counters are kept in the worker and added when the
lanes drain, every second, or at a warm stop: each test checks what a user
reading Redis, GET /workers or /metrics would see.
"""

from __future__ import annotations

import signal

import pytest
from flask.testing import FlaskClient
from redis import Redis

from service.core import keys, metrics
from service.workers.claim import Claimer
from tests import parity_tasks  # noqa: F401 - registers parity.hold
from tests.api import Api
from tests.helpers import wait_until
from tests.processes import Processes
from tests.worker_fixtures import FAST, enqueue

TASKS = {"TASK_MODULES": "tests.parity_tasks"}


@pytest.fixture
def api(client: FlaskClient) -> Api:
    return Api(client)


WORKER = "deferring"


def status(connection: Redis, job_id: str) -> str | None:
    found = connection.hget(keys.job_key(job_id), "status")
    return found.decode() if found else None


def records(connection: Redis, job_id: str) -> dict[str, object]:
    """RQ's execution records of `job_id` run by WORKER: the execution hash, registry and worker set."""
    members = [m.decode() for m in connection.smembers(keys.worker_executions_key(WORKER))]
    ours = [m for m in members if m.startswith(f"{job_id}:")]
    execution = connection.hgetall(keys.EXECUTION_PREFIX + ours[0]) if ours else {}
    return {
        "worker set": ours,
        "execution hash": sorted(k.decode() for k in execution),
        "executions registry": connection.zcard(keys.executions_key(job_id)),
    }


def finished_count(connection: Redis, task: str, lane: str = "default") -> int:
    return int(connection.hget(keys.METRICS_KEY, metrics.field("jobs_finished", task, lane)) or 0)


def test_a_job_running_past_a_beat_has_rqs_execution_records_and_they_go_with_it(
    connection: Redis, processes: Processes, api: Api
) -> None:
    processes.worker("default", "--no-fork", "--name", WORKER, *FAST, env=TASKS)
    job_id = api.enqueue(task="parity.hold", args=["release"], queue="default")["id"]
    wait_until(lambda: records(connection, job_id)["worker set"], timeout=30, what="the records (first beat)")
    found = records(connection, job_id)
    assert found["execution hash"] == ["created_at", "id", "job_id", "last_heartbeat", "worker_name"]
    assert found["executions registry"] == 1
    assert connection.hget(keys.job_key(job_id), "last_heartbeat") is not None
    (worker,) = (w for w in api.get("/workers")[1]["workers"] if w["name"] == WORKER)
    assert worker["state"] == "busy" and worker["current_job"] == job_id

    connection.rpush("release", 1)
    wait_until(lambda: status(connection, job_id) == "finished", timeout=30, what="the job to finish")
    assert records(connection, job_id) == {"worker set": [], "execution hash": [], "executions registry": 0}
    assert list(connection.scan_iter(f"{keys.EXECUTION_PREFIX}{job_id}:*")) == []
    assert connection.hget(keys.job_key(job_id), "last_heartbeat") is None  # it would repeat ended_at


def test_a_job_younger_than_a_beat_has_no_execution_records_but_shows_as_the_workers_current_job(
    connection: Redis, processes: Processes, api: Api
) -> None:
    processes.worker("default", "--no-fork", "--name", WORKER, "--heartbeat-seconds", "60", env=TASKS)
    wait_until(lambda: connection.exists(keys.alive_key(WORKER)), timeout=30, what="the worker's first beat")
    job_id = api.enqueue(task="parity.hold", args=["release"], queue="default")["id"]
    wait_until(lambda: status(connection, job_id) == "started", timeout=30, what="the job to start")
    assert records(connection, job_id) == {"worker set": [], "execution hash": [], "executions registry": 0}
    (worker,) = (w for w in api.get("/workers")[1]["workers"] if w["name"] == WORKER)
    assert worker["state"] == "busy" and worker["current_job"] == job_id  # from its claimed list
    lanes = {lane["name"]: lane for lane in api.get("/queues")[1]["queues"]}
    assert lanes["default"]["started"] == 1  # the started registry is written at the claim
    connection.rpush("release", 1)
    wait_until(lambda: status(connection, job_id) == "finished", timeout=30, what="the job to finish")


def test_the_counters_are_exact_as_soon_as_the_lanes_are_drained(connection: Redis, processes: Processes) -> None:
    jobs = [enqueue(connection, "diag.echo", i).id for i in range(30)]
    processes.worker("default", "--no-fork", "--name", WORKER)
    wait_until(lambda: all(status(connection, j) == "finished" for j in jobs), timeout=30, what="the jobs")
    assert finished_count(connection, "diag.echo") == 30  # no wait: added in the call that stored the last one
    counted = {k.decode(): v.decode() for k, v in connection.hgetall(keys.METRICS_KEY).items()}
    assert counted[metrics.field("jobs_started", "diag.echo", "default")] == "30"
    histogram = metrics.field("job_duration_seconds", "diag.echo", "default")
    assert sum(int(v) for k, v in counted.items() if k.startswith(f"{histogram}|in=")) == 30
    waits = metrics.field("job_wait_seconds", "default")
    assert sum(int(v) for k, v in counted.items() if k.startswith(f"{waits}|in=")) == 30
    assert connection.hget(keys.worker_key(WORKER), "successful_job_count") == b"30"


def test_counts_kept_while_a_long_job_runs_are_added_by_the_heartbeat(connection: Redis, processes: Processes) -> None:
    quick = enqueue(connection, "diag.echo", 1).id
    held = enqueue(connection, "parity.hold", "release").id  # claimed in the call that stores `quick`
    processes.worker("default", "--no-fork", "--name", WORKER, *FAST, env=TASKS)
    wait_until(lambda: status(connection, quick) == "finished", timeout=30, what="the quick job")
    wait_until(lambda: finished_count(connection, "diag.echo") == 1, timeout=30, what="its count (a beat)")
    assert status(connection, held) == "started"
    connection.rpush("release", 1)


def test_counts_kept_by_a_worker_are_added_at_its_warm_stop(connection: Redis, processes: Processes) -> None:
    quick = enqueue(connection, "diag.echo", 1).id
    held = enqueue(connection, "parity.hold", "never").id
    worker = processes.worker("default", "--no-fork", "--name", WORKER, "--grace-seconds", "0.2", *FAST, env=TASKS)
    # Running, not only marked started by the call that stored `quick` (a stop before it runs puts it back
    # unrun, which is no redelivery): the heartbeat writes its execution records only while it runs.
    wait_until(lambda: records(connection, held)["worker set"], timeout=30, what="the held job to run")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert status(connection, quick) == "finished" and status(connection, held) == "queued"  # back in its lane
    assert finished_count(connection, "diag.echo") == 1
    assert connection.hget(keys.METRICS_KEY, metrics.field("jobs_redelivered", "parity.hold", "default")) == b"1"


def test_a_claimer_adds_its_kept_counts_when_it_flushes(connection: Redis) -> None:
    claimer = Claimer(connection, WORKER)
    claimer.tally.count("jobs_finished", "diag.echo", "default", amount=2)
    claimer.tally.worker("total_working_time", 0.5)
    assert finished_count(connection, "diag.echo") == 0  # kept
    claimer.flush()
    assert finished_count(connection, "diag.echo") == 2
    assert float(connection.hget(keys.worker_key(WORKER), "total_working_time") or 0) == 0.5
    claimer.flush()  # nothing kept: nothing added twice
    assert finished_count(connection, "diag.echo") == 2
