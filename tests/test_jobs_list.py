"""A page of ended jobs shows each job's result or error, as the job itself does."""

from __future__ import annotations

from flask.testing import FlaskClient
from redis import Redis

from service.jobs import describe as view
from service.jobs import operations as jobs
from tests.api import Api
from tests.helpers import wait_until
from tests.processes import Processes


def test_listed_jobs_carry_their_results_and_errors(
    client: FlaskClient, connection: Redis, processes: Processes
) -> None:
    api = Api(client)
    echoed = [api.enqueue(task="diag.echo", args=[i], queue="low")["id"] for i in range(4)]
    failing = api.enqueue(task="testing.flaky", args=["list-1", 5], queue="low")["id"]
    waiting = api.enqueue(task="diag.echo", args=["later"], queue="low", delay=3600)["id"]
    processes.worker("low")
    wait_until(lambda: api.job(failing)["status"] == "failed", timeout=30, what="the failing job")
    wait_until(lambda: all(api.job(i)["status"] == "finished" for i in echoed), timeout=30, what="echo jobs")

    status, finished = api.get("/jobs?status=finished&queue=low")
    assert status == 200
    assert {j["id"]: j["result"] for j in finished["jobs"]} == {
        i: {"args": [n], "kwargs": {}} for n, i in enumerate(echoed)
    }
    status, failed = api.get("/jobs?status=failed&queue=low")
    assert status == 200
    assert [(j["id"], j["error"]) for j in failed["jobs"]] == [(failing, "RuntimeError: failure 1 of 5")]

    every = [jobs.fetch(connection, i) for i in [*echoed, failing, waiting]]
    assert view.describe_many(connection, every) == [view.describe(job) for job in every]
