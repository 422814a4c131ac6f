"""LOG_FORMAT=json: every line a worker prints is one JSON object, and a job's lines carry its fields."""

from __future__ import annotations

import json

from flask.testing import FlaskClient

from tests.api import Api
from tests.helpers import wait_until
from tests.processes import Processes


def test_json_logs_parse_line_by_line_with_job_fields(client: FlaskClient, processes: Processes) -> None:
    api = Api(client)
    worker = processes.worker(env={"LOG_FORMAT": "json"})
    ok = api.enqueue(task="diag.echo", args=[1], queue="high")
    bad = api.enqueue(task="diag.fail")
    wait_until(lambda: api.job(bad["id"])["status"] == "failed" and api.job(ok["id"])["status"] == "finished")
    wait_until(lambda: ok["id"] in worker.output(), timeout=10)
    lines = [json.loads(line) for line in worker.output().splitlines() if line.strip()]
    assert lines and all({"time", "level", "role", "message"} <= set(line) for line in lines)
    assert {line["role"] for line in lines} == {"worker"}
    finished = next(line for line in lines if line.get("job_id") == ok["id"])
    assert (finished["task"], finished["queue"]) == ("diag.echo", "high")
    assert finished["duration_ms"] >= 0
    assert any(line.get("job_id") == bad["id"] and line["level"] == "ERROR" for line in lines)
