"""Batches with an on_complete callback: the API, the tally and the exactly-once callback, on a real Redis."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest
from flask.testing import FlaskClient
from redis import Redis

from service import create_app
from service.core import keys
from service.core.config import Limits, Settings
from service.core.connection import connect
from service.jobs import batches
from service.jobs.model import ServiceJob
from tests.api import Api
from tests.conftest import TOKEN
from tests.helpers import snapshot

ECHO = {"task": "diag.echo"}
ON_COMPLETE = {"task": "diag.echo", "args": ["done"], "kwargs": {"tag": 7}, "queue": "high"}


@pytest.fixture
def api(client: FlaskClient) -> Api:
    return Api(client)


def open_batch(api: Api, count: int, **extra: Any) -> dict[str, Any]:
    status, body = api.post("/jobs/batch", {"jobs": [ECHO] * count, "on_complete": ON_COMPLETE, **extra})
    assert status == 202, body
    return body


def end(connection: Redis, job_id: str, outcome: str) -> None:
    job = ServiceJob.fetch(job_id, connection=connection)
    with connection.pipeline() as pipe:
        batches.end(pipe, job.id, job.batch_id, outcome)
        pipe.execute()


def callback_of(connection: Redis, batch_id: str) -> ServiceJob:
    return ServiceJob.fetch(batch_id + batches.ON_COMPLETE_SUFFIX, connection=connection)


def test_a_batch_with_on_complete_has_an_id_on_itself_and_each_job(api: Api, connection: Redis) -> None:
    body = open_batch(api, 3)
    batch_id = body["batch_id"]
    assert [job["batch_id"] for job in body["jobs"]] == [batch_id] * 3
    assert api.job(body["jobs"][0]["id"])["batch_id"] == batch_id
    assert api.get(f"/batches/{batch_id}") == (200, {
        "id": batch_id, "total": 3, "finished": 0, "failed": 0, "canceled": 0, "pending": 3,
        "on_complete_job_id": None,
    })  # fmt: skip
    plain = api.post("/jobs/batch", {"jobs": [ECHO]})[1]
    assert plain["batch_id"] is None and plain["jobs"][0]["batch_id"] is None


def test_the_last_end_enqueues_the_callback_once_with_the_tally(api: Api, connection: Redis) -> None:
    body = open_batch(api, 3)
    batch_id, ids = body["batch_id"], [job["id"] for job in body["jobs"]]
    end(connection, ids[0], "finished")
    end(connection, ids[0], "finished")  # a second run of the same job: counted once
    end(connection, ids[1], "failed")
    assert api.get(f"/batches/{batch_id}")[1]["pending"] == 1
    assert connection.llen(keys.queue_key("high")) == 0
    end(connection, ids[2], "canceled")
    end(connection, ids[2], "finished")
    tally = {"id": batch_id, "total": 3, "finished": 1, "failed": 1, "canceled": 1}
    callback = callback_of(connection, batch_id)
    assert (callback.origin, callback.func_name, callback.args) == ("high", "diag.echo", ["done"])
    assert callback.kwargs == {"tag": 7, "batch": tally}
    assert callback.get_status() == "queued" and callback.enqueued_at is not None
    assert connection.lrange(keys.queue_key("high"), 0, -1) == [callback.id.encode()]  # once
    assert api.get(f"/batches/{batch_id}")[1] == {**tally, "pending": 0, "on_complete_job_id": callback.id}
    assert 0 < connection.ttl(keys.batch_key(batch_id)) <= batches.KEEP_SECONDS


def test_canceling_by_the_api_and_deleting_in_the_dashboard_count_as_canceled(api: Api, connection: Redis) -> None:
    body = open_batch(api, 2)
    ids = [job["id"] for job in body["jobs"]]
    assert api.post(f"/jobs/{ids[0]}/cancel")[0] == 200
    auth = {"Authorization": "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode()}
    deleted = api.client.post(f"/dashboard/job/{ids[1]}/delete", headers={**auth, "Origin": "http://localhost"})
    assert deleted.status_code == 200
    tally = api.get(f"/batches/{body['batch_id']}")[1]
    assert (tally["canceled"], tally["pending"], tally["on_complete_job_id"]) == (
        2,
        0,
        callback_of(connection, body["batch_id"]).id,
    )


def test_emptying_a_lane_in_the_dashboard_ends_its_batch_jobs(api: Api, connection: Redis) -> None:
    body = open_batch(api, 4)
    auth = {
        "Authorization": "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode(),
        "Origin": "http://localhost",
    }
    assert api.client.post("/dashboard/queue/default/queued/empty", headers=auth).status_code == 200
    tally = api.get(f"/batches/{body['batch_id']}")[1]
    assert (tally["canceled"], tally["pending"]) == (4, 0)
    assert callback_of(connection, body["batch_id"]).kwargs["batch"]["canceled"] == 4


def test_a_job_returned_for_a_repeated_idempotency_key_stays_out_of_the_batch(api: Api, connection: Redis) -> None:
    first = api.enqueue(task="diag.echo", idempotency_key="k1")
    body = api.post("/jobs/batch", {"jobs": [{**ECHO, "idempotency_key": "k1"}, ECHO], "on_complete": ON_COMPLETE})[1]
    assert body["jobs"][0]["id"] == first["id"] and body["jobs"][0]["batch_id"] is None
    assert api.get(f"/batches/{body['batch_id']}")[1]["total"] == 1


def test_a_batch_whose_jobs_all_existed_completes_at_once(api: Api, connection: Redis) -> None:
    api.enqueue(task="diag.echo", idempotency_key="k2")
    body = api.post("/jobs/batch", {"jobs": [{**ECHO, "idempotency_key": "k2"}], "on_complete": ON_COMPLETE})[1]
    tally = api.get(f"/batches/{body['batch_id']}")[1]
    assert (tally["total"], tally["on_complete_job_id"]) == (0, callback_of(connection, body["batch_id"]).id)


@pytest.mark.parametrize(
    ("on_complete", "field"),
    [
        ({"task": "os.system"}, "on_complete.task"),
        ({"task": "hooks.webhook"}, "on_complete.task"),
        ({"task": "diag.sleep"}, "on_complete"),  # diag.sleep(seconds) takes no `batch` keyword
        ({"task": "diag.echo", "kwargs": {"batch": 1}}, "on_complete.kwargs"),
        ({"task": "diag.echo", "queue": "urgent"}, "on_complete.queue"),
        ({"task": "diag.echo", "when": "later"}, "on_complete.when"),
    ],
)
def test_a_bad_on_complete_is_refused_and_writes_nothing(
    api: Api, connection: Redis, on_complete: dict[str, Any], field: str
) -> None:
    before = snapshot(connection)
    status, body = api.post("/jobs/batch", {"jobs": [ECHO], "on_complete": on_complete})
    assert status == 422 and body["error"]["message"].startswith(field), body
    assert snapshot(connection) == before


def test_a_full_lane_refuses_the_batch_and_opens_nothing(settings: Settings, connection: Redis) -> None:
    limits = Limits(queue_length=2)
    app = create_app(replace(settings, limits=limits), connection=connect(settings.redis_url, role="web"))
    before = snapshot(connection)
    status, body = Api(app.test_client()).post("/jobs/batch", {"jobs": [ECHO] * 3, "on_complete": ON_COMPLETE})
    assert status == 429, body
    assert snapshot(connection) == before


def test_an_unknown_batch_is_a_404(api: Api) -> None:
    status, body = api.get("/batches/no-such-batch")
    assert status == 404 and body["error"]["code"] == "batch_not_found"


def test_the_cli_enqueues_a_batch_from_json_lines_and_reads_it(redis_url: str, tmp_path: Any) -> None:
    from click.testing import CliRunner

    from service.cli.main import cli

    source = tmp_path / "jobs.jsonl"
    source.write_text('{"task": "diag.echo", "args": [1]}\n{"task": "diag.echo", "args": [2]}\n')
    env = {"REDIS_URL": redis_url, "API_TOKENS": TOKEN}
    runner = CliRunner()
    made = runner.invoke(cli, ["enqueue-batch", str(source), "--on-complete", "diag.echo"], env=env)
    assert made.exit_code == 0, made.output
    body = json.loads(made.output)
    assert [job["args"] for job in body["jobs"]] == [[1], [2]]
    read = runner.invoke(cli, ["batch", body["batch_id"]], env=env)
    assert json.loads(read.output)["pending"] == 2
    assert runner.invoke(cli, ["batch", "no-such-batch"], env=env).exit_code == 1


@pytest.mark.parametrize(
    ("source", "options", "words"),
    [
        (b"\xff\xfe{}", [], "file: is not UTF-8 text"),
        (b'{"task": "diag.echo"}\n{"task": \n', [], "file: neither JSON lines nor a JSON body"),
        (b'{"task": "diag.echo", "args": [1e400]}\n', [], "jobs.0.args: numbers must be finite"),
        (b'{"task": "diag.echo"}\n', ["--on-complete", "{bad"], "on_complete: is neither a task name nor a JSON"),
    ],
)
def test_the_cli_refuses_a_bad_batch_source_in_one_line_and_enqueues_nothing(
    redis_url: str, connection: Redis, tmp_path: Any, source: bytes, options: list[str], words: str
) -> None:
    from click.testing import CliRunner

    from service.cli.main import cli

    path = tmp_path / "jobs.jsonl"
    path.write_bytes(source)
    made = CliRunner().invoke(cli, ["enqueue-batch", str(path), *options], env={"REDIS_URL": redis_url})
    assert made.exit_code == 2, made.output
    assert f"error: {words}" in made.output and "Traceback" not in made.output
    assert connection.keys("rq:job:*") == []
