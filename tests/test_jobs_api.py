"""Job options over HTTP without a worker: what is stored, what is refused (and that nothing is written)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from service.jobs.describe import describe
from service.jobs.model import ServiceJob, ServiceQueue
from tests.api import Api
from tests.parity import call_of


@pytest.fixture
def api(client: FlaskClient) -> Api:
    return Api(client)


def test_task_default_lane_is_used_when_the_job_names_none(api: Api) -> None:
    assert api.enqueue(task="reports.generate", args=["r1"])["queue"] == "low"
    assert api.enqueue(task="reports.generate", args=["r1"], queue="high")["queue"] == "high"


def test_delay_parks_the_job_in_the_scheduled_registry(api: Api, connection: Redis) -> None:
    job = api.enqueue(task="diag.echo", delay=30)
    assert job["status"] == "scheduled"
    score = connection.zscore("rq:scheduled:default", job["id"])
    assert score >= datetime.now(UTC).timestamp() + 29


def test_at_in_another_offset_is_the_same_instant(api: Api, connection: Redis) -> None:
    moment = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)
    job = api.enqueue(task="diag.echo", at=moment.astimezone(timezone(timedelta(hours=-5))).isoformat())
    assert connection.zscore("rq:scheduled:default", job["id"]) == moment.timestamp()


def test_at_with_sub_second_part_is_rounded_up_never_early(api: Api, connection: Redis) -> None:
    moment = datetime.now(UTC) + timedelta(minutes=5)
    moment = moment.replace(microsecond=400_000)
    job = api.enqueue(task="diag.echo", at=moment.isoformat())
    assert connection.zscore("rq:scheduled:default", job["id"]) == int(moment.timestamp()) + 1


def test_at_in_the_past_means_now(api: Api) -> None:
    job = api.enqueue(task="diag.echo", at="2001-01-01T00:00:00+00:00")
    assert job["status"] == "queued"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"delay": -1}, "delay"),
        ({"delay": "10"}, "delay"),
        ({"delay": 10**9}, "delay"),
        ({"at": "2030-01-01T00:00:00"}, "at"),
        ({"at": "9999-12-31T00:00:00+00:00"}, "at"),
        ({"at": "tomorrow"}, "at"),
        ({"delay": 5, "at": "2030-01-01T00:00:00+00:00"}, "at"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": 1.5}, "timeout"),
        ({"ttl": -5}, "ttl"),
        ({"result_ttl": True}, "result_ttl"),
        ({"retry": {"max": 99}}, "retry.max"),
        ({"retry": {"max": 2, "backoff": []}}, "retry.backoff"),
        ({"retry": {"max": 2, "backoff": "linear"}}, "retry.backoff"),
        ({"retry": {"max": 2, "backoff": [-1]}}, "retry.backoff"),
        ({"idempotency_key": "has space"}, "idempotency_key"),
        ({"idempotency_key": "x" * 200}, "idempotency_key"),
        ({"depends_on": ["no-such-job"]}, "depends_on"),
        ({"depends_on": "abc"}, "depends_on"),
        ({"kwargs": {"not valid": 1}}, "kwargs"),
        ({"args": list(range(1001))}, "args"),
    ],
)
def test_bad_option_is_422_naming_the_field(api: Api, connection: Redis, body: dict, field: str) -> None:
    status, error = api.post("/jobs", {"task": "diag.echo", **body})
    assert status == 422, error
    assert error["error"]["message"].startswith(field), error
    assert connection.dbsize() == 0


def test_arguments_that_do_not_fit_the_task_are_422(api: Api, connection: Redis) -> None:
    status, error = api.post("/jobs", {"task": "diag.sleep", "args": [1, 2, 3]})
    assert (status, error["error"]["code"]) == (422, "invalid_field")
    assert error["error"]["message"].startswith("args")
    status, error = api.post("/jobs", {"task": "diag.fail", "kwargs": {"nope": 1}})
    assert status == 422 and error["error"]["message"].startswith("kwargs")
    assert connection.dbsize() == 0


def test_idempotency_key_returns_the_first_job_with_200(api: Api) -> None:
    first = api.enqueue(task="diag.echo", args=[1], idempotency_key="order-42")
    status, again = api.post("/jobs", {"task": "diag.echo", "args": [1], "idempotency_key": "order-42"})
    assert (status, again["id"]) == (200, first["id"])


def test_idempotency_key_reused_for_another_request_is_409(api: Api) -> None:
    api.enqueue(task="diag.echo", args=[1], idempotency_key="order-43")
    status, error = api.post("/jobs", {"task": "diag.echo", "args": [2], "idempotency_key": "order-43"})
    assert (status, error["error"]["code"]) == (409, "conflict")


def test_idempotency_key_is_free_again_once_the_job_is_gone(api: Api, connection: Redis) -> None:
    first = api.enqueue(task="diag.echo", idempotency_key="k1")
    connection.delete(f"rq:job:{first['id']}")
    assert api.enqueue(task="diag.echo", idempotency_key="k1")["id"] != first["id"]


def concurrently(app: Flask, count: int, body: dict) -> list[tuple[int, str]]:
    """POST `body` from `count` threads released at once; return (status, job id) of each."""
    barrier = threading.Barrier(count)
    answers: list[tuple[int, str]] = []

    def post() -> None:
        api = Api(app.test_client())
        barrier.wait()
        status, job = api.post("/jobs", body)
        answers.append((status, job.get("id")))

    threads = [threading.Thread(target=post) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return answers


def test_idempotency_holds_under_twenty_concurrent_posts(app: Flask, connection: Redis) -> None:
    answers = concurrently(app, 20, {"task": "diag.echo", "args": [7], "idempotency_key": "race-1"})
    assert len(answers) == 20
    assert len({job_id for _, job_id in answers}) == 1
    assert sorted(status for status, _ in answers) == [200] * 19 + [202]
    assert ServiceQueue("default", connection=connection).count == 1


def test_unique_task_holds_under_twenty_concurrent_posts(app: Flask, connection: Redis) -> None:
    answers = concurrently(app, 20, {"task": "testing.unique_sleep", "args": [1]})
    assert len({job_id for _, job_id in answers}) == 1
    assert ServiceQueue("default", connection=connection).count == 1


def test_unique_task_with_other_arguments_is_another_job(api: Api) -> None:
    assert (
        api.enqueue(task="testing.unique_sleep", args=[1])["id"]
        != api.enqueue(task="testing.unique_sleep", args=[2])["id"]
    )


def test_unique_task_enqueues_again_once_the_first_has_ended(api: Api, connection: Redis) -> None:
    first = api.enqueue(task="testing.unique_sleep", args=[3])
    connection.hset(f"rq:job:{first['id']}", "status", "finished")
    assert api.enqueue(task="testing.unique_sleep", args=[3])["id"] != first["id"]


def test_batch_of_a_thousand_jobs_is_one_request_in_order(api: Api, connection: Redis) -> None:
    bodies = [{"task": "diag.echo", "args": [i]} for i in range(1000)]
    status, answer = api.post("/jobs/batch", {"jobs": bodies})
    assert status == 202
    assert [job["args"] for job in answer["jobs"]] == [[i] for i in range(1000)]
    assert ServiceQueue("default", connection=connection).job_ids == [job["id"] for job in answer["jobs"]]


def test_one_bad_entry_rejects_the_whole_batch(api: Api, connection: Redis) -> None:
    bodies = [{"task": "diag.echo"}] * 3 + [{"task": "os.system"}] + [{"task": "diag.echo"}]
    status, error = api.post("/jobs/batch", {"jobs": bodies})
    assert status == 422
    assert error["error"]["message"].startswith("jobs.3.task")
    assert connection.dbsize() == 0


def test_batch_written_jobs_read_the_same_through_rq_and_the_api(api: Api, connection: Redis) -> None:
    parent = api.enqueue(task="diag.sleep", args=[1])
    bodies = [
        {"task": "diag.echo", "args": [1, "two", {"three": [3]}], "kwargs": {"four": None}},
        {"task": "diag.echo", "queue": "high", "timeout": 5, "result_ttl": 0, "ttl": 60},
        {"task": "diag.echo", "retry": {"max": 2, "backoff": [1, 5]}},
        {"task": "diag.echo", "retry": {"max": 3}, "idempotency_key": "batch-read-1"},
        {"task": "diag.echo", "delay": 30},
        {"task": "diag.echo", "depends_on": [parent["id"]]},
        {"task": "reports.generate", "args": ["r1"]},
    ]
    status, answer = api.post("/jobs/batch", {"jobs": bodies})
    assert status == 202
    assert [j["status"] for j in answer["jobs"]] == ["queued"] * 4 + ["scheduled", "deferred", "queued"]
    for written in answer["jobs"]:
        assert api.job(written["id"]) == written
        stored = connection.hgetall(f"rq:job:{written['id']}")
        job = Job.fetch(written["id"], connection=connection, serializer=JSONSerializer)
        assert (job.func_name, list(job.args), job.kwargs) == (written["task"], written["args"], written["kwargs"])
        assert (job.origin, job.get_status(refresh=False).value) == (written["queue"], written["status"])
        # RQ writes back exactly what was stored (the same call; RQ always compresses it, the service not
        # when short), plus the fields it writes empty, which the service leaves out (RQ reads either as unset).
        rewritten = {k.encode(): _redis_bytes(v) for k, v in job.to_dict().items() if _redis_bytes(v)}
        assert call_of(rewritten.pop(b"data")) == call_of(stored.pop(b"data"))
        assert rewritten == stored
    assert Job.fetch(answer["jobs"][3]["id"], connection=connection).retries_left == 3
    assert connection.sismember(f"rq:job:{parent['id']}:dependents", answer["jobs"][5]["id"])


def _redis_bytes(value: object) -> bytes:
    """`value` as redis-py sends it."""
    if isinstance(value, bytes):
        return value
    return str(value.value if isinstance(value, Enum) else value).encode()


def test_batch_repeating_an_idempotency_key_gets_one_job(api: Api, connection: Redis) -> None:
    body = {"task": "diag.echo", "args": [1], "idempotency_key": "twice-in-one-batch"}
    status, answer = api.post("/jobs/batch", {"jobs": [body, {"task": "diag.echo"}, body]})
    assert status == 202
    assert answer["jobs"][0] == answer["jobs"][2]
    assert ServiceQueue("default", connection=connection).count == 2


def test_enqueue_many_returns_the_jobs_as_stored(connection: Redis, app: Flask) -> None:
    from service.jobs.enqueue import enqueue_many
    from service.jobs.schemas import JobRequest

    jobs = enqueue_many(connection, [JobRequest(task="diag.echo", args=[i], ttl=30) for i in range(3)])
    for job in jobs:
        stored = ServiceJob.fetch(job.id, connection=connection)
        assert job.to_dict() == stored.to_dict()
        assert describe(job) == describe(stored)


@pytest.mark.parametrize("body", [{"jobs": []}, {"jobs": [{"task": "diag.echo"}] * 1001}, {"jobs": {}}, {}])
def test_batch_shape_is_checked(api: Api, body: dict) -> None:
    status, error = api.post("/jobs/batch", body)
    assert status == 422 and error["error"]["message"].startswith("jobs")


def test_list_jobs_pages_with_a_cursor(api: Api) -> None:
    ids = {api.enqueue(task="diag.echo", args=[i], queue="low")["id"] for i in range(7)}
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        status, page = api.get("/jobs?status=queued&queue=low&limit=3" + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200 and len(page["jobs"]) <= 3
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)


@pytest.mark.parametrize("query", ["status=done", "queue=urgent", "limit=0", "limit=x", "cursor=abc", "cursor=99.0"])
def test_list_jobs_refuses_bad_queries(api: Api, query: str) -> None:
    status, error = api.get(f"/jobs?{query}")
    assert status == 422, error
    assert error["error"]["message"].startswith(query.split("=")[0])


def test_queues_report_every_lane(api: Api) -> None:
    api.enqueue(task="diag.echo", queue="high")
    api.enqueue(task="diag.echo", delay=60)
    status, body = api.get("/queues")
    assert status == 200
    lanes = {q["name"]: q for q in body["queues"]}
    assert set(lanes) == {"high", "default", "low"}
    assert lanes["high"]["queued"] == 1 and lanes["default"]["scheduled"] == 1
    assert set(lanes["low"]) >= {"queued", "started", "scheduled", "deferred", "failed", "finished"}


def test_tasks_lists_the_registered_tasks_with_defaults(api: Api) -> None:
    status, body = api.get("/tasks")
    tasks = {t["name"]: t for t in body["tasks"]}
    assert status == 200 and {"diag.echo", "diag.sleep", "diag.fail", "diag.record"} <= set(tasks)
    assert tasks["reports.generate"]["queue"] == "low"
    assert set(tasks["diag.echo"]) >= {"queue", "timeout", "retry", "result_ttl"}


@pytest.mark.parametrize("action", ["cancel", "requeue"])
def test_actions_on_an_unknown_job_are_404(api: Api, action: str) -> None:
    status, error = api.post(f"/jobs/no-such-job/{action}")
    assert (status, error["error"]["code"]) == (404, "job_not_found")


def test_cancel_a_queued_job(api: Api, connection: Redis) -> None:
    job = api.enqueue(task="diag.echo")
    status, canceled = api.post(f"/jobs/{job['id']}/cancel")
    assert (status, canceled["status"]) == (200, "canceled")
    assert ServiceQueue("default", connection=connection).count == 0
    status, error = api.post(f"/jobs/{job['id']}/cancel")
    assert (status, error["error"]["code"]) == (409, "conflict")


def test_cancel_a_scheduled_job(api: Api, connection: Redis) -> None:
    job = api.enqueue(task="diag.echo", delay=60)
    assert api.post(f"/jobs/{job['id']}/cancel")[1]["status"] == "canceled"
    assert connection.zcard("rq:scheduled:default") == 0


def test_requeue_a_job_that_has_not_failed_is_409(api: Api) -> None:
    job = api.enqueue(task="diag.echo")
    status, error = api.post(f"/jobs/{job['id']}/requeue")
    assert (status, error["error"]["code"]) == (409, "conflict")


def test_openapi_document_lists_every_job_endpoint(api: Api) -> None:
    status, doc = api.get("/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    paths = doc["paths"]
    assert {"/jobs", "/jobs/batch", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/jobs/{job_id}/requeue"} <= set(paths)
    assert {"/queues", "/workers", "/tasks", "/healthz", "/readyz"} <= set(paths)
    ref = paths["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert body["required"] == ["task"]
    assert {"task", "args", "kwargs", "queue", "delay", "at", "retry", "idempotency_key"} <= set(body["properties"])
