"""POST /jobs and GET /jobs/<id>: the job fields clients rely on."""

from __future__ import annotations

import base64
import json
import zlib
from datetime import datetime

from click.testing import CliRunner
from flask.testing import FlaskClient
from redis import Redis

from service.cli.main import cli
from service.jobs.model import JOB_ID, ServiceQueue
from tests.api import Api
from tests.conftest import AUTH, TOKEN

JSON = {**AUTH, "Content-Type": "application/json"}
JOB_FIELDS = {
    "id", "task", "queue", "status", "args", "kwargs", "result", "error",
    "attempts", "enqueued_at", "started_at", "ended_at",
}  # fmt: skip


def enqueue(client: FlaskClient, body: dict[str, object]) -> dict[str, object]:
    response = client.post("/jobs", data=json.dumps(body), headers=JSON)
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.get_json()


def test_post_job_answers_202_with_the_queued_job(client: FlaskClient) -> None:
    job = enqueue(client, {"task": "diag.echo", "args": [1, "two"], "kwargs": {"three": 3}})
    assert JOB_FIELDS <= set(job)
    assert job["task"] == "diag.echo"
    assert (job["status"], job["queue"], job["attempts"]) == ("queued", "default", 0)
    assert (job["args"], job["kwargs"], job["result"], job["error"]) == ([1, "two"], {"three": 3}, None, None)
    assert job["enqueued_at"].endswith("Z")
    assert datetime.fromisoformat(job["enqueued_at"]).utcoffset().total_seconds() == 0
    assert job["started_at"] is None and job["ended_at"] is None


def test_job_goes_to_the_lane_asked_for(client: FlaskClient, connection: Redis) -> None:
    job = enqueue(client, {"task": "diag.echo", "queue": "high"})
    assert job["queue"] == "high"
    assert ServiceQueue("high", connection=connection).job_ids == [job["id"]]


def test_job_is_stored_as_json_never_pickle(client: FlaskClient, connection: Redis) -> None:
    job = enqueue(client, {"task": "diag.echo", "args": [1]})
    data = connection.hget(f"rq:job:{job['id']}", "data")
    assert json.loads(data) == ["diag.echo", None, [1], {}]  # short: stored as it is
    job = enqueue(client, {"task": "diag.echo", "args": ["x" * 100]})
    data = connection.hget(f"rq:job:{job['id']}", "data")
    assert json.loads(zlib.decompress(data)) == ["diag.echo", None, ["x" * 100], {}]


def test_a_jobs_data_is_rqs_json_text_as_it_is_or_deflated_by_size(connection: Redis) -> None:
    from rq.job import Job
    from rq.serializers import JSONSerializer

    from service.jobs.writer import UNCOMPRESSED_BYTES, job_data

    calls = [([1], {}), (["é\n", 1.5, None, -0.0, 10**30], {"b": {"a": [True]}}), (["x" * 200], {"y": 1e300})]
    for args, kwargs in calls:
        text = JSONSerializer.dumps(("diag.echo", None, args, kwargs))
        data = job_data("diag.echo", args, kwargs)
        short = len(text) < UNCOMPRESSED_BYTES
        assert data == text if short else zlib.decompress(data) == text
        job = Job("j", connection=connection, serializer=JSONSerializer)
        job.restore({b"data": data, b"created_at": b"2026-01-01T00:00:00.000000Z"})
        assert (job.func_name, job.args, job.kwargs) == ("diag.echo", args, kwargs)  # stock RQ reads both forms


def test_get_job_reads_it_back(client: FlaskClient) -> None:
    job = enqueue(client, {"task": "diag.echo"})
    response = client.get(f"/jobs/{job['id']}", headers=AUTH)
    assert response.status_code == 200
    assert response.get_json() == job


def test_unknown_job_is_404(client: FlaskClient) -> None:
    response = client.get("/jobs/no-such-job", headers=AUTH)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "job_not_found"


def test_an_id_the_service_makes_is_short_and_taken_everywhere_an_id_is(
    client: FlaskClient, process_env: dict[str, str]
) -> None:
    api = Api(client)
    status, answer = api.post("/jobs/batch", {"jobs": [{"task": "diag.echo", "args": [i]} for i in range(200)]})
    assert status == 202
    ids = [job["id"] for job in answer["jobs"]]
    # 16 URL-safe characters, never a leading '-' (a command line would read it as an option), all different.
    assert all(len(i) == 16 and JOB_ID.fullmatch(i) and i[0].isalpha() for i in ids) and len(set(ids)) == 200
    child = api.enqueue(task="diag.echo", depends_on=[ids[0]])
    assert child["status"] == "deferred" and api.job(child["id"]) == child
    dashboard = {"Authorization": "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode()}
    detail = client.get(f"/dashboard/0/data/job/{child['id']}.json", headers=dashboard).get_json()
    assert detail["id"] == child["id"]
    shown = CliRunner().invoke(cli, ["job", ids[1]], env=process_env, catch_exceptions=False)
    assert shown.exit_code == 0 and json.loads(shown.stdout)["id"] == ids[1]
    status, canceled = api.post(f"/jobs/{child['id']}/cancel")
    assert (status, canceled["status"]) == (200, "canceled")
