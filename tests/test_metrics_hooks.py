"""/metrics in Prometheus format, and hooks that user code subscribes to."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from service import hooks
from tests.api import Api
from tests.conftest import AUTH


def samples(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    found = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_need_a_token(client: FlaskClient) -> None:
    assert client.get("/metrics").status_code == 401


def test_enqueued_counter_moves_by_exactly_the_jobs_enqueued(client: FlaskClient) -> None:
    api = Api(client)
    before = samples(client)
    for _ in range(3):
        api.enqueue(task="diag.echo", queue="high")
    api.post("/jobs/batch", {"jobs": [{"task": "diag.echo", "queue": "low"}] * 4})
    api.post("/jobs", {"task": "os.system"})  # refused: not counted
    after = samples(client)
    key = ("jobs_enqueued_total", (("queue", "high"), ("task", "diag.echo")))
    assert after[key] - before.get(key, 0) == 3
    assert after[("jobs_enqueued_total", (("queue", "low"), ("task", "diag.echo")))] == 4
    assert after[("queue_depth", (("queue", "low"),))] == 4
    assert after[("queue_oldest_job_age_seconds", (("queue", "low"),))] >= 0
    assert ("workers_alive", ()) in after


@pytest.fixture
def received() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []

    def record(event: dict[str, Any]) -> None:
        events.append(event)

    hooks.on("job.failed")(record)
    yield events
    hooks.unsubscribe("job.failed", record)


def test_emit_calls_each_subscriber_once_with_the_event(received: list[dict[str, Any]]) -> None:
    hooks.emit("job.failed", job_id="j1", task="diag.fail")
    assert len(received) == 1
    assert received[0]["event"] == "job.failed" and received[0]["job_id"] == "j1" and received[0]["time"]


def test_a_failing_subscriber_does_not_stop_the_others(received: list[dict[str, Any]]) -> None:
    def broken(event: dict[str, Any]) -> None:
        raise RuntimeError("hook bug")

    hooks.on("job.failed")(broken)
    try:
        hooks.emit("job.failed", job_id="j2")
    finally:
        hooks.unsubscribe("job.failed", broken)
    assert [e["job_id"] for e in received] == ["j2"]


def test_unknown_event_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown event"):
        hooks.on("job.exploded")
