"""Enqueue-to-start latency: the worker counts each job's wait per lane; /metrics and the charts show it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from flask.testing import FlaskClient
from redis import Redis
from rq.utils import utcformat

from service.core import keys, metrics
from service.core.keys import ROLLUP_MINUTE_KEY
from service.ops import rollup
from service.workers.claim import Claimer
from tests.api import Api
from tests.helpers import wait_until
from tests.processes import Processes
from tests.test_claim import put
from tests.test_dashboard import GOOD
from tests.test_metrics_hooks import samples

BACKDATED_SECONDS = 40  # falls in the (30, 60] bucket whatever the machine's speed


def wait_samples(client: FlaskClient, lane: str) -> dict[str, float]:
    """job_wait_seconds of `lane` from /metrics: 'le=<bound>', 'count' and 'sum'."""
    found = {}
    for (name, labels), value in samples(client).items():
        label = dict(labels)
        if name.startswith("job_wait_seconds") and label.get("queue") == lane:
            found[f"le={label['le']}" if "le" in label else name.rsplit("_", 1)[-1]] = value
    return found


def test_each_jobs_wait_shows_in_metrics_and_in_the_charts(
    client: FlaskClient, connection: Redis, processes: Processes
) -> None:
    api = Api(client)
    connection.set(ROLLUP_MINUTE_KEY, 10**9)  # the worker's heartbeat writes no summary: this test writes them
    rollup.write(connection, time.time() - 60)  # the totals the next summary is the difference from
    late = [api.enqueue(task="diag.echo", queue="low")["id"] for _ in range(5)]
    fresh = [api.enqueue(task="diag.echo", queue="high")["id"] for _ in range(3)]
    long_ago = utcformat(datetime.now(UTC) - timedelta(seconds=BACKDATED_SECONDS))
    for job_id in late:  # as if enqueued 40 s ago
        connection.hset(keys.job_key(job_id), "enqueued_at", long_ago)

    processes.worker("high", "low", "--no-fork")
    wait_until(lambda: all(api.job(i)["status"] == "finished" for i in late + fresh), timeout=30, what="the jobs")

    low, high = wait_samples(client, "low"), wait_samples(client, "high")
    assert low["le=30.0"] == 0 and low["le=60.0"] == 5 and low["le=+Inf"] == 5 and low["count"] == 5
    assert BACKDATED_SECONDS * 5 <= low["sum"] <= 60 * 5
    assert high["count"] == 3 and high["le=+Inf"] == 3
    assert wait_samples(client, "default") == {}  # no job started there

    rollup.write(connection, time.time())
    data = client.get("/dashboard/charts/data.json", headers=GOOD).get_json()
    assert BACKDATED_SECONDS <= data["wait_p50"]["low"][-1] <= data["wait_p95"]["low"][-1] <= 60
    assert data["wait_p50"]["high"][-1] is not None and data["wait_p50"]["default"][-1] is None


def test_only_a_queued_job_starting_counts_a_wait(connection: Redis) -> None:
    """A job claimed while not queued (claimed again after its worker died) starts no new wait; a bad stamp none."""
    now = utcformat(datetime.now(UTC))
    put(connection, "default", "again", status="started")
    put(connection, "default", "stampless", "fresh")
    connection.hset(keys.job_key("again"), "enqueued_at", now)
    connection.hset(keys.job_key("stampless"), "enqueued_at", "not a time")
    connection.hset(keys.job_key("fresh"), "enqueued_at", now)
    claimer = Claimer(connection, "w1")
    assert [claimer.claim(["default"], 60).job_id for _ in range(3)] == ["again", "stampless", "fresh"]
    assert claimer.claim(["default"], 60) is None  # the lane drained: the counts the worker kept are added
    counted = {k.decode(): v for k, v in connection.hgetall(keys.METRICS_KEY).items() if b"wait" in k}
    assert sum(int(v) for k, v in counted.items() if "|in=" in k) == 1 and "job_wait_seconds|default|sum" in counted


def test_histograms_an_older_release_wrote_still_count(client: FlaskClient, connection: Redis) -> None:
    """Cumulative `le=`/`count` fields (the previous release's shape) and one-bucket `in=` fields add up."""
    older = {"job_wait_seconds|low|sum": 50.86, "job_wait_seconds|low|count": 4}
    for bound in metrics.DURATION_BUCKETS:  # as it counted 0.08, 0.08, 0.7 and 50: every bucket a value is within
        older[f"job_wait_seconds|low|le={bound}"] = sum(1 for v in (0.08, 0.08, 0.7, 50) if v <= bound)
    connection.hset(keys.METRICS_KEY, mapping=older)
    with connection.pipeline() as pipe:
        metrics.observe(pipe, "job_wait_seconds", 0.05, "low")
        metrics.observe(pipe, "job_wait_seconds", 500, "low")
        pipe.execute()
    low = wait_samples(client, "low")
    assert low["le=0.05"] == 1 and low["le=0.1"] == 3 and low["le=1.0"] == 4 and low["le=30.0"] == 4
    assert low["le=60.0"] == 5 and low["le=300.0"] == 5 and low["le=+Inf"] == 6 and low["count"] == 6
    assert round(low["sum"], 2) == 550.91
