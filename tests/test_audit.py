"""The audit log: who changed what and every refused token, newest first, bounded, never holding a token."""

from __future__ import annotations

import base64
import getpass
import json
import logging
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis

from service import create_app
from service.cli.main import cli
from service.core.config import Settings
from service.core.connection import connect
from service.core.keys import AUDIT_KEY
from service.ops import audit
from tests.conftest import TOKEN
from tests.helpers import wait_until
from tests.processes import Processes
from tests.test_routes_hostile import SCHEDULE
from tests.worker_fixtures import start_worker

OPS = "ops-secret-token-0123456789"
READER = "reader-secret-token-0123456789"
AUDITOR = "auditor-secret-token-0123456789"
SECRETS = (OPS, READER, AUDITOR, TOKEN)


@pytest.fixture
def app(settings: Settings, connection: Redis) -> Flask:
    tokens = (TOKEN, f"ops:operate:{OPS}", f"reader:read:{READER}", f"auditor:admin:{AUDITOR}")
    scoped = Settings(redis_url=settings.redis_url, api_tokens=tokens, task_modules=settings.task_modules)
    return create_app(scoped, connection=connect(settings.redis_url, role="web"))


def call(client: FlaskClient, method: str, path: str, token: str, body: Any = None, **headers: str) -> Any:
    if path.startswith("/dashboard"):
        auth = "Basic " + base64.b64encode(f"ops:{token}".encode()).decode()
        headers = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin", **headers}
    else:
        auth = f"Bearer {token}"
    return client.open(path, method=method, json=body, headers={"Authorization": auth, **headers})


def events(client: FlaskClient, **query: Any) -> dict[str, Any]:
    response = client.get("/audit", query_string=query, headers={"Authorization": f"Bearer {AUDITOR}"})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_each_accepted_state_change_is_recorded_with_who_what_and_the_request_id(client: FlaskClient) -> None:
    job = call(client, "POST", "/jobs", TOKEN, {"task": "diag.echo", "delay": 60}).get_json()
    done = [
        call(client, "POST", f"/jobs/{job['id']}/cancel", OPS),
        call(client, "PUT", "/schedules/nightly", OPS, SCHEDULE),
        call(client, "POST", "/schedules/nightly/pause", OPS),
        call(client, "POST", "/schedules/nightly/resume", OPS),
        call(client, "POST", "/schedules/nightly/run", OPS),
        call(
            client,
            "POST",
            "/schedules/nightly/backfill",
            OPS,
            {"from": "2026-01-01T00:00:00Z", "to": "2026-01-03T00:00:00Z"},
        ),
        call(client, "DELETE", "/schedules/nightly", OPS),
    ]
    assert all(200 <= r.status_code < 300 for r in done), [r.get_json() for r in done]
    page = events(client)["events"]
    assert [(e["action"], e["target"]) for e in page] == [
        ("schedule.delete", "nightly"),
        ("schedule.backfill", "nightly"),
        ("schedule.run", "nightly"),
        ("schedule.resume", "nightly"),
        ("schedule.pause", "nightly"),
        ("schedule.put", "nightly"),
        ("job.cancel", job["id"]),
    ]
    for event, response in zip(page, reversed(done), strict=True):
        assert event["principal"] == "ops" and event["status"] == response.status_code
        assert event["request_id"] == response.headers["X-Request-Id"] and event["remote_addr"] == "127.0.0.1"
        assert event["time"].endswith("Z") and event["id"]


def test_a_schedule_put_is_recorded_by_its_write_once_and_a_refused_one_not_at_all(
    client: FlaskClient, connection: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.audit")
    answers = [call(client, "PUT", "/schedules/nightly", OPS, SCHEDULE) for _ in range(2)]  # created, unchanged
    answers.append(call(client, "PUT", "/schedules/nightly", OPS, {**SCHEDULE, "args": [2]}))  # replaced
    assert [a.status_code for a in answers] == [201, 200, 200]
    refused = call(client, "PUT", "/schedules/other", OPS, {**SCHEDULE, "skip_calendars": ["none"]})
    assert refused.status_code == 422 and not connection.exists("svc:schedule:other")
    page = events(client)["events"][::-1]
    assert [(e["action"], e["target"], e["status"]) for e in page] == [
        ("schedule.put", "nightly", s) for s in (201, 200, 200)
    ]
    assert [e["request_id"] for e in page] == [a.headers["X-Request-Id"] for a in answers]
    logged = [r.audit for r in caplog.records if hasattr(r, "audit")]  # one log line per event, as before
    assert [(e["action"], e["status"]) for e in logged] == [("schedule.put", str(s)) for s in (201, 200, 200)]


def test_enqueues_reads_and_refused_input_are_not_audited(client: FlaskClient, connection: Redis) -> None:
    call(client, "POST", "/jobs", OPS.replace("ops", "x"), {"task": "diag.echo"})  # 401: audited
    before = connection.xlen(AUDIT_KEY)
    assert call(client, "POST", "/jobs", TOKEN, {"task": "diag.echo"}).status_code == 202
    assert call(client, "POST", "/jobs/batch", TOKEN, {"jobs": [{"task": "diag.echo"}] * 3}).status_code == 202
    assert call(client, "GET", "/jobs", TOKEN).status_code == 200
    assert call(client, "PUT", "/schedules/x%0A", TOKEN, SCHEDULE).status_code == 404
    assert call(client, "POST", "/jobs/no-such-job/cancel", TOKEN).status_code == 404
    assert connection.xlen(AUDIT_KEY) == before


def test_every_401_and_403_is_recorded_and_no_token_is_ever_stored_or_logged(
    client: FlaskClient, connection: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.audit")
    wrong = "wrong-token-0123456789-abcdef"
    assert call(client, "POST", "/jobs/x/cancel", wrong).status_code == 401
    assert client.post("/jobs/x/cancel").status_code == 401
    assert call(client, "POST", "/jobs/x/cancel", READER).status_code == 403
    assert call(client, "POST", "/dashboard/job/x/delete", READER).status_code == 403
    assert call(client, "GET", "/dashboard/", wrong).status_code == 401
    assert call(client, "GET", "/audit", OPS).status_code == 403
    page = events(client)["events"]
    assert [(e["principal"], e["action"], e["target"], e["status"]) for e in page] == [
        ("ops", "auth.forbidden", "GET /audit", 403),
        ("anonymous", "auth.unauthorized", "GET /dashboard/", 401),
        ("reader", "auth.forbidden", "POST /dashboard/job/<job_id>/delete", 403),
        ("reader", "auth.forbidden", "POST /jobs/<job_id>/cancel", 403),
        ("anonymous", "auth.unauthorized", "POST /jobs/<job_id>/cancel", 401),
        ("anonymous", "auth.unauthorized", "POST /jobs/<job_id>/cancel", 401),
    ]
    stored = json.dumps(
        [[i.decode(), {k.decode(): v.decode() for k, v in f.items()}] for i, f in connection.xrange(AUDIT_KEY)]
    )
    for secret in (*SECRETS, wrong):
        assert secret not in stored and secret not in caplog.text
    assert caplog.text.count("audit ") >= len(page)


def test_dashboard_actions_are_recorded(client: FlaskClient, processes: Processes) -> None:
    start_worker(processes, env={"TASK_MODULES": "service.tasks.diag"})
    failed = call(client, "POST", "/jobs", TOKEN, {"task": "diag.fail"}).get_json()
    queued = call(client, "POST", "/jobs", TOKEN, {"task": "diag.echo", "delay": 300}).get_json()
    call(client, "PUT", "/schedules/nightly", TOKEN, SCHEDULE)
    wait_until(lambda: call(client, "GET", f"/jobs/{failed['id']}", TOKEN).get_json()["status"] == "failed", timeout=20)
    processes.stop_all()
    for path in (
        f"/dashboard/job/{failed['id']}/requeue",
        f"/dashboard/job/{queued['id']}/delete",
        "/dashboard/queue/low/failed/empty",
        "/dashboard/schedules/nightly/pause",
    ):
        assert call(client, "POST", path, OPS).status_code in (200, 303), path
    page = events(client, limit=4)["events"]
    assert [(e["principal"], e["action"], e["target"]) for e in page] == [
        ("ops", "schedule.pause", "nightly"),
        ("ops", "queue.empty", "low/failed"),
        ("ops", "job.delete", queued["id"]),
        ("ops", "job.requeue", failed["id"]),
    ]


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        ("lb-0123456789abcdef", True),
        ("req:2026-12-07.abc_1", True),
        ("short", False),
        ("x" * 200, False),
        ("a b c d e f g h", False),
    ],
)
def test_a_sane_incoming_request_id_is_kept_and_echoed(client: FlaskClient, incoming: str, kept: bool) -> None:
    response = call(client, "POST", "/schedules/none/pause", READER, **{"X-Request-Id": incoming})
    echoed = response.headers["X-Request-Id"]
    assert (echoed == incoming) is kept and 8 <= len(echoed) <= 128
    assert events(client, limit=1)["events"][0]["request_id"] == echoed


def test_every_response_carries_a_request_id(client: FlaskClient) -> None:
    ids = {client.get(path).headers.get("X-Request-Id") for path in ("/healthz", "/jobs", "/nowhere", "/dashboard/")}
    assert None not in ids and len(ids) == 4


def test_audit_pages_newest_first_with_a_cursor(client: FlaskClient, connection: Redis) -> None:
    for n in range(7):
        audit.record(connection, audit.AuditEvent("ops", "schedule.pause", f"s{n}", 200), 1000)
    seen, cursor = [], None
    while True:
        page = events(client, limit=3, **({"cursor": cursor} if cursor else {}))
        seen += [e["target"] for e in page["events"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"s{n}" for n in reversed(range(7))]
    too_many = client.get("/audit?limit=501", headers={"Authorization": f"Bearer {AUDITOR}"})
    assert too_many.status_code == 422 and too_many.get_json()["error"]["message"].startswith("limit:")


def test_the_audit_log_is_bounded(connection: Redis) -> None:
    with connection.pipeline(transaction=False) as pipe:
        for n in range(5000):
            audit.record(pipe, audit.AuditEvent("ops", "job.cancel", f"j{n}", 200), 1000)
        pipe.execute()
    assert 1000 <= connection.xlen(AUDIT_KEY) < 1200  # MAXLEN ~ trims whole macro nodes (100 entries each)
    newest = connection.xrevrange(AUDIT_KEY, count=1)[0][1]
    assert newest[b"target"] == b"j4999"


def test_a_control_character_in_a_field_cannot_forge_a_log_line(connection: Redis) -> None:
    event = audit.AuditEvent("ops", "auth.unauthorized", "GET /x\naudit root schedule.delete all 200", 401)
    assert "\n" not in event.fields()["target"] and event.fields()["target"].startswith("GET /x\\n")


def test_the_cli_records_its_changes_and_prints_the_log(process_env: dict[str, str], connection: Redis) -> None:
    runner = CliRunner()
    created = runner.invoke(
        cli, ["schedules", "add", "nightly", "--task", "diag.echo", "--cron", "0 3 * * *"], env=process_env
    )
    paused = runner.invoke(cli, ["schedules", "pause", "nightly"], env=process_env)
    assert created.exit_code == 0 and paused.exit_code == 0, (created.output, paused.output)
    printed = runner.invoke(cli, ["audit", "--limit", "5"], env=process_env)
    assert printed.exit_code == 0
    lines = printed.stdout.splitlines()
    principal = f"cli:{getpass.getuser()}"
    assert principal in lines[0] and "schedule.pause" in lines[0] and "nightly" in lines[0]
    assert principal in lines[1] and "schedule.put" in lines[1]
    as_json = json.loads(runner.invoke(cli, ["audit", "--json", "--limit", "1"], env=process_env).stdout)
    assert as_json["events"][0]["action"] == "schedule.pause" and as_json["next_cursor"]
    bad = runner.invoke(cli, ["audit", "--cursor", "x\n"], env=process_env)
    assert bad.exit_code == 2 and "cursor" in bad.stderr
