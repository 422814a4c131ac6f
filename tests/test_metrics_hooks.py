"""/metrics in Prometheus format, and hooks that user code subscribes to."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from service.ops import hooks
from service.schedules import runs as schedule_runs
from service.schedules.runs import Entry
from tests.api import Api
from tests.conftest import AUTH
from tests.helpers import wait_until
from tests.processes import Processes


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


class Receiver(http.server.BaseHTTPRequestHandler):
    """Collects POSTed JSON bodies into the server's `received` list."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def webhook_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_failing_job_calls_the_hook_once_and_the_webhook_receives_it(
    client: FlaskClient, processes: Processes, tmp_path: Path, webhook_server: http.server.HTTPServer
) -> None:
    hook_log = tmp_path / "hooks.jsonl"
    url = f"http://127.0.0.1:{webhook_server.server_address[1]}/failures"
    processes.worker(env={"TEST_HOOK_LOG": str(hook_log), "TEST_WEBHOOK_URL": url, "OUTBOUND_ALLOW": "127.0.0.1"})
    api = Api(client)
    job = api.enqueue(task="testing.fail_with_webhook", args=["out of disk"])
    received = wait_until(lambda: webhook_server.received, timeout=30, what="the webhook")  # type: ignore[attr-defined]
    assert received[0]["event"] == "job.failed" and received[0]["job_id"] == job["id"]
    assert received[0]["error"] == "RuntimeError: out of disk"
    events = [json.loads(line) for line in hook_log.read_text().splitlines()]
    assert [e["job_id"] for e in events if e["task"] == "testing.fail_with_webhook"] == [job["id"]]
    assert api.job(job["id"])["status"] == "failed"


def test_job_counters_move_by_exactly_the_jobs_run(client: FlaskClient, processes: Processes) -> None:
    api = Api(client)
    before = samples(client)
    ids = [api.enqueue(task="diag.echo", args=[i], queue="low")["id"] for i in range(5)]
    ids.append(api.enqueue(task="diag.fail", queue="low")["id"])
    processes.worker()
    wait_until(lambda: all(api.job(i)["status"] in ("finished", "failed") for i in ids), timeout=30)
    after = samples(client)

    def moved(name: str, task: str) -> float:
        key = (name, (("queue", "low"), ("task", task)))
        return after.get(key, 0) - before.get(key, 0)

    assert moved("jobs_started_total", "diag.echo") == 5
    assert moved("jobs_finished_total", "diag.echo") == 5
    assert moved("jobs_failed_total", "diag.fail") == 1
    assert moved("job_duration_seconds_count", "diag.echo") == 5


def test_schedule_runs_and_lag_reach_the_metrics(client: FlaskClient, processes: Processes, connection) -> None:  # type: ignore[no-untyped-def]
    from service.schedules import operations as schedules

    schedules.upsert(connection, "every-second", {"task": "diag.echo", "interval": 1, "overlap": "allow"})
    processes.scheduler()
    wait_until(lambda: schedules.get(connection, "every-second")["counters"]["runs"] >= 3, timeout=30)
    found = samples(client)  # one HGETALL: runs and lag observations are counted by the same script
    assert found[("schedule_runs_total", ())] >= 3
    assert found[("scheduler_lag_seconds_count", ())] == found[("schedule_runs_total", ())]
    assert found[("scheduler_lag_seconds_sum", ())] >= 0
    assert found[("scheduler_lag_seconds_bucket", (("le", "+Inf"),))] == found[("scheduler_lag_seconds_count", ())]


def test_a_firing_reports_its_schedule_events_to_hooks() -> None:
    events: list[dict[str, Any]] = []
    names = ("schedule.fired", "schedule.missed", "schedule.coalesced", "schedule.skipped")
    for name in names:
        hooks.on(name)(events.append)
    due = Entry("nightly", "due", records=[(1, "missed"), (2, "missed"), (3, "coalesced")])
    try:
        assert schedule_runs.report(due, [1, 0, 1]) == 1  # one run created, one dropped (a run was buffered)
        assert schedule_runs.report(Entry("nightly", "manual"), [1, 0, 1]) == 2
    finally:
        for name in names:
            hooks.unsubscribe(name, events.append)
    assert [(e["event"], e["schedule_id"], e["count"], e.get("reason")) for e in events] == [
        ("schedule.missed", "nightly", 2, None),
        ("schedule.coalesced", "nightly", 1, None),
        ("schedule.skipped", "nightly", 1, "dropped"),
        ("schedule.fired", "nightly", 1, None),
        ("schedule.fired", "nightly", 2, None),
    ]
