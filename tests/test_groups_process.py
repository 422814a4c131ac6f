"""Fair share with real workers: a backlog does not hold back another group, group caps hold across workers."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient
from redis import Redis

import service.tasks.diag  # noqa: F401 - registers diag.*
import tests.worker_tasks  # noqa: F401 - registers the workertest.* tasks enqueued here
from service.jobs.enqueue import InternalRequest, enqueue_many
from tests.conftest import AUTH
from tests.helpers import wait_until
from tests.processes import Processes
from tests.test_worker_limits import max_overlap
from tests.worker_fixtures import recorded, start_worker

pytestmark = pytest.mark.slow


def record_jobs(group: str, count: int) -> list[InternalRequest]:
    return [InternalRequest("diag.record", args=["order", f"{group}{i}"], group=group) for i in range(count)]


def test_a_groups_ten_jobs_start_before_the_thirtieth_of_a_backlog_of_a_thousand(
    connection: Redis, processes: Processes
) -> None:
    enqueue_many(connection, record_jobs("A", 1000))
    enqueue_many(connection, record_jobs("B", 10))
    start_worker(processes, "default")
    wait_until(lambda: len(recorded(connection, "order")) == 1010, timeout=120, what="every job to run")
    order = recorded(connection, "order")
    assert sorted(order) == sorted([f"A{i}" for i in range(1000)] + [f"B{i}" for i in range(10)])
    last_b = max(order.index(f"B{i}") for i in range(10))
    assert last_b < order.index("A29")
    assert [v for v in order if v.startswith("A")] == [f"A{i}" for i in range(1000)]  # each group in its order


def test_a_group_cap_holds_per_group_across_workers_and_other_groups_run_meanwhile(
    connection: Redis, processes: Processes
) -> None:
    calls = [InternalRequest("workertest.group_capped", args=["spans", 0.3], group=g) for g in "ab" * 4]
    calls += [InternalRequest("diag.record", args=["other", i]) for i in range(10)]
    enqueue_many(connection, calls)
    for i in range(3):
        start_worker(processes, "default", name=f"w{i}")
    wait_until(lambda: len(recorded(connection, "spans")) == 8, timeout=60, what="every capped job")
    spans = [json.loads(v) for v in recorded(connection, "spans")]
    for group in "ab":
        assert max_overlap([(s, e) for g, s, e in spans if g == group]) == 1  # never two of a group at once
    assert max_overlap([(s, e) for _, s, e in spans]) == 2  # the two groups ran side by side
    wait_until(lambda: len(recorded(connection, "other")) == 10, timeout=30, what="the other jobs")
    assert not connection.keys("svc:limit:workertest.group_capped:group:*")  # every slot released


def test_the_api_takes_a_group_and_shows_groups_per_lane(client: FlaskClient, connection: Redis) -> None:
    for group in ("acme", "acme", "globex"):
        assert client.post("/jobs", json={"task": "diag.echo", "group": group}, headers=AUTH).status_code == 202
    answer = client.post("/jobs", json={"task": "diag.echo"}, headers=AUTH).get_json()
    assert answer["group"] is None
    job = client.post("/jobs/batch", json={"jobs": [{"task": "diag.echo", "group": "x.y:z-1"}]}, headers=AUTH)
    assert job.get_json()["jobs"][0]["group"] == "x.y:z-1"
    assert client.get(f"/jobs/{job.get_json()['jobs'][0]['id']}", headers=AUTH).get_json()["group"] == "x.y:z-1"
    lanes = {q["name"]: q for q in client.get("/queues", headers=AUTH).get_json()["queues"]}
    assert (lanes["default"]["groups"], lanes["default"]["queued"], lanes["high"]["groups"]) == (3, 5, 0)
    assert 'queue_groups{queue="default"} 3.0' in client.get("/metrics", headers=AUTH).get_data(as_text=True)
    refused = client.post("/jobs", json={"task": "diag.echo", "group": "no spaces"}, headers=AUTH)
    assert refused.status_code == 422 and "group" in refused.get_json()["error"]["message"]
