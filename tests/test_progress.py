"""Progress: a running task's service.progress(value) is the job's `progress` in the API, the CLI and the dashboard,
in no-fork and fork workers; each report is one call to Redis; diag.progress reports each step."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from flask.testing import FlaskClient
from redis import Redis

import service
from service.dev.embedded_redis import free_port
from service.jobs.context import PROGRESS_MAX_BYTES
from service.jobs.enqueue import InternalRequest, enqueue
from service.jobs.model import ServiceJob
from tests.api import Api, HttpApi
from tests.helpers import wait_until
from tests.processes import ROOT, Processes
from tests.test_dashboard import GOOD

FIRST = {"done": 1, "total": 2, "note": "<b>half</b>"}
SECOND = {"done": 2, "total": 2}


def cli_job(env: dict[str, str], job_id: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "service", "job", job_id], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


@pytest.mark.parametrize("mode", ["--no-fork", "--fork"])
def test_progress_is_null_until_reported_then_the_latest_value_in_the_api_and_the_cli(
    mode: str, processes: Processes, process_env: dict[str, str], connection: Redis
) -> None:
    port = free_port()
    processes.web(port)
    api = HttpApi(port)
    created = api.post("/jobs", {"task": "testing.report", "args": [[FIRST, SECOND], "go"]})
    assert created.status == 202 and created.body["progress"] is None
    job_id = created.body["id"]
    assert api.get(f"/jobs/{job_id}").body["progress"] is None
    processes.worker(mode)

    running = wait_until(
        lambda: (job := api.get(f"/jobs/{job_id}").body)["progress"] is not None and job, what="the first report"
    )
    assert running["status"] == "started" and running["progress"] == FIRST
    assert cli_job(process_env, job_id)["progress"] == FIRST
    connection.rpush("go", 1)
    done = wait_until(lambda: (job := api.get(f"/jobs/{job_id}").body)["status"] == "finished" and job)
    assert done["progress"] == SECOND and done["result"] == 2


def test_diag_progress_reports_each_step_and_returns_the_steps(
    client: FlaskClient, processes: Processes, connection: Redis
) -> None:
    api = Api(client)
    job = api.enqueue(task="diag.progress", args=[3, 0.01])
    processes.worker()
    done = wait_until(lambda: (found := api.job(job["id"]))["status"] == "finished" and found, timeout=20)
    assert done["result"] == 3 and done["progress"] == {"done": 3, "total": 3}


def perform(connection: Redis, task: str, *args: Any) -> ServiceJob:
    """Run a job of `task` in this process, as a worker would call it (RQ sets the current job)."""
    job = ServiceJob.fetch(enqueue(connection, InternalRequest(task, list(args))).id, connection=connection)
    job.perform()
    return ServiceJob.fetch(job.id, connection=connection)


def test_each_report_is_one_call_to_redis_without_a_read(connection: Redis) -> None:
    job = ServiceJob.fetch(
        enqueue(connection, InternalRequest("testing.report_many", [50, {"done": 1}])).id, connection=connection
    )
    connection.config_resetstat()
    job.perform()
    stats = connection.info("commandstats")
    # One EVALSHA per report; inside it, EXISTS (no stub hash for a deleted job) and HSET; nothing read.
    assert stats["cmdstat_evalsha"]["calls"] == 50
    assert stats["cmdstat_hset"]["calls"] == 50 and stats["cmdstat_exists"]["calls"] == 50
    assert "cmdstat_hgetall" not in stats and "cmdstat_hget" not in stats
    assert ServiceJob.fetch(job.id, connection=connection).progress == {"done": 1}


def test_progress_refuses_what_is_not_json_or_too_large_and_does_nothing_outside_a_job(connection: Redis) -> None:
    assert service.progress(0.5) is False  # not inside a job
    with pytest.raises(TypeError):
        perform(connection, "testing.report_set")
    with pytest.raises(ValueError, match=f"at most {PROGRESS_MAX_BYTES}"):
        perform(connection, "testing.report_many", 1, "x" * PROGRESS_MAX_BYTES)  # two more bytes: the quotes
    assert perform(connection, "testing.report_many", 1, "x" * (PROGRESS_MAX_BYTES - 2)).progress is not None


def test_the_dashboard_job_page_data_carries_progress(client: FlaskClient, connection: Redis) -> None:
    job = perform(connection, "testing.report_many", 1, {"done": 7, "total": 9})
    response = client.get(f"/dashboard/0/data/job/{job.id}.json", headers=GOOD)
    assert response.status_code == 200 and response.get_json()["progress"] == {"done": 7, "total": 9}
