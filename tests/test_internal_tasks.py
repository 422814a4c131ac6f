"""Internal tasks (hooks.*): clients cannot enqueue or schedule them; the service still runs its own."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from redis import Redis

from service.cli.main import cli
from service.core.errors import InternalTask
from service.jobs.enqueue import InternalRequest, enqueue
from service.tasks.registry import REGISTRY, task
from tests.conftest import AUTH

JSON = {**AUTH, "Content-Type": "application/json"}
WEBHOOK_ARGS = ["http://127.0.0.1:9/x", {"event": "job.failed"}]


def refused_as_internal(response: Any, field: str) -> None:
    assert response.status_code == 422, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "unknown_task"
    assert error["message"] == f"{field}: 'hooks.webhook' is an internal task: only the service enqueues it"


def test_post_jobs_refuses_an_internal_task_and_writes_nothing(client: FlaskClient, connection: Redis) -> None:
    body = {"task": "hooks.webhook", "args": WEBHOOK_ARGS}
    refused_as_internal(client.post("/jobs", data=json.dumps(body), headers=JSON), "task")
    assert connection.dbsize() == 0


def test_a_batch_naming_an_internal_task_is_refused_whole(client: FlaskClient, connection: Redis) -> None:
    body = {"jobs": [{"task": "diag.echo"}, {"task": "hooks.webhook", "args": WEBHOOK_ARGS}]}
    refused_as_internal(client.post("/jobs/batch", data=json.dumps(body), headers=JSON), "jobs.1.task")
    assert connection.dbsize() == 0


def test_a_schedule_cannot_name_an_internal_task(client: FlaskClient, connection: Redis) -> None:
    body = {"task": "hooks.webhook", "args": WEBHOOK_ARGS, "interval": 60}
    refused_as_internal(client.put("/schedules/deliver", data=json.dumps(body), headers=JSON), "task")
    assert not connection.keys("svc:schedule*")


def test_the_cli_refuses_an_internal_task(process_env: dict[str, str], connection: Redis) -> None:
    result = CliRunner().invoke(
        cli, ["enqueue", "hooks.webhook", *map(json.dumps, WEBHOOK_ARGS)], env=process_env, catch_exceptions=False
    )
    assert result.exit_code == 2
    assert result.stderr == "error: task: 'hooks.webhook' is an internal task: only the service enqueues it\n"
    assert connection.dbsize() == 0


def test_the_service_still_enqueues_its_internal_task(connection: Redis) -> None:
    job = enqueue(connection, InternalRequest(task="hooks.webhook", args=WEBHOOK_ARGS))
    assert (job.func_name, job.origin, job.get_status()) == ("hooks.webhook", "low", "queued")


def test_the_task_list_marks_internal_tasks(client: FlaskClient) -> None:
    tasks = {t["name"]: t for t in client.get("/tasks", headers=AUTH).get_json()["tasks"]}
    assert tasks["hooks.webhook"]["internal"] is True and tasks["diag.echo"]["internal"] is False


@pytest.mark.parametrize(("name", "internal", "expected"), [("hooks.page", False, True), ("ops.page", True, True),
                                                            ("ops.page", False, False)])  # fmt: skip
def test_hooks_names_are_always_internal_and_others_when_asked(name: str, internal: bool, expected: bool) -> None:
    task(name, internal=internal)(lambda: None)
    try:
        assert REGISTRY.get(name).internal is expected
        assert _refused(name) is expected
    finally:
        REGISTRY._tasks.pop(name)


def _refused(name: str) -> bool:
    try:
        REGISTRY.public(name)
    except InternalTask:
        return True
    return False
