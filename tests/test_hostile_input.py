"""Hostile input: every nasty body gets a clear 4xx in the error shape and writes nothing to Redis."""

from __future__ import annotations

import json
import socket

import pytest
from flask.testing import FlaskClient
from redis import Redis

from service.dev.embedded_redis import free_port
from tests.conftest import AUTH, TOKEN
from tests.processes import Processes

JSON = {**AUTH, "Content-Type": "application/json"}
SCHEDULE = {"task": "diag.echo", "cron": "0 3 * * *"}


def assert_refused(response, statuses: tuple[int, ...], connection: Redis) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code in statuses, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"]
    assert "Traceback" not in response.get_data(as_text=True)
    assert not connection.keys("rq:job:*") and not connection.keys("svc:schedule:*")


@pytest.mark.parametrize(
    "body",
    [
        {"task": "diag.echo", "args": list(range(10_000))},
        {"task": "diag.echo", "kwargs": {f"k{i}": i for i in range(10_000)}},
        {"task": "__import__", "args": ["os"]},
        {"task": "diag.echo.__globals__"},
        {"task": "diag:echo"},
        {"task": "../diag/echo"},
        {"task": "diag.echo "},
        {"task": "diag.еcho"},  # Cyrillic е
        {"task": "x" * 10_000},
        {"task": "diag.echo", "delay": -0.5},
        {"task": "diag.echo", "delay": 1e309},
        {"task": "diag.echo", "at": "9999-12-31T23:59:59+00:00"},
        {"task": "diag.echo", "queue": "rq:queue:high"},
        {"task": "diag.echo", "idempotency_key": "a\x00b"},
        {"task": "diag.echo", "idempotency_key": "key\n"},
        {"task": "diag.echo", "depends_on": ["job\n"]},
        {"task": "diag.echo", "depends_on": ["x" * 300]},
        {"task": None},
        {"task": True},
    ],
)
def test_nasty_job_bodies_are_refused(client: FlaskClient, connection: Redis, body: dict) -> None:
    assert_refused(client.post("/jobs", data=json.dumps(body), headers=JSON), (400, 413, 422), connection)


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("/jobs", '{"task": "diag.echo", "args": [1e400]}'),
        ("/jobs", '{"task": "diag.echo", "kwargs": {"x": [{"y": -1e999}]}}'),
        ("/jobs/batch", '{"jobs": [{"task": "diag.echo"}, {"task": "diag.echo", "args": [1e400]}]}'),
        ("/jobs/batch", '{"jobs": [{"task": "diag.echo"}], "on_complete": {"task": "diag.echo", "args": [1E500]}}'),
    ],
)
def test_numbers_json_cannot_carry_are_refused(client: FlaskClient, connection: Redis, path: str, text: str) -> None:
    """1e400 parses as infinity: stored, it would come back as `Infinity`, which no JSON client can read."""
    response = client.post(path, data=text, headers=JSON)
    assert_refused(response, (422,), connection)
    assert "finite" in response.get_json()["error"]["message"]


def test_a_schedule_with_an_out_of_range_number_is_refused(client: FlaskClient, connection: Redis) -> None:
    text = '{"task": "diag.echo", "cron": "0 3 * * *", "args": [1e400]}'
    assert_refused(client.put("/schedules/huge", data=text, headers=JSON), (422,), connection)


def test_batch_of_ten_thousand_is_refused(client: FlaskClient, connection: Redis) -> None:
    body = json.dumps({"jobs": [{"task": "diag.echo"}] * 10_000})
    assert_refused(client.post("/jobs/batch", data=body, headers=JSON), (413, 422), connection)


@pytest.mark.parametrize(
    "change",
    [
        {"cron": "0 0 30 2 *"},  # February 30th: never fires
        {"cron": "61 * * * *"},
        {"cron": "* * *"},
        {"cron": "@reboot"},
        {"cron": "*/0 * * * *"},
        {"cron": "0 3 * * * *"},
        {"timezone": "Mars/Olympus"},
        {"timezone": "../../etc/passwd"},
        {"timezone": "America/New_York\x00"},
        {"timezone": ""},
        {"cron": None, "at": "9999-12-31T00:00:00+00:00"},
        {"cron": None, "interval": 0},
        {"cron": None, "interval": -5},
        {"cron": None, "interval": 1.5},
        {"cron": None},
        {"interval": 10},
        {"task": "os.system"},
        {"queue": "urgent"},
        {"jitter": -1},
        {"overlap": "sometimes"},
    ],
)
def test_nasty_schedules_are_refused(client: FlaskClient, connection: Redis, change: dict) -> None:
    body = {k: v for k, v in {**SCHEDULE, **change}.items() if v is not None}
    assert_refused(client.put("/schedules/nasty", data=json.dumps(body), headers=JSON), (400, 422), connection)


@pytest.mark.parametrize("schedule_id", ["has space", "a:b", "x" * 101, "ünï"])
def test_bad_schedule_ids_are_refused(client: FlaskClient, connection: Redis, schedule_id: str) -> None:
    response = client.put(f"/schedules/{schedule_id}", data=json.dumps(SCHEDULE), headers=JSON)
    assert_refused(response, (404, 422), connection)


def raw_request(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def test_raw_hostile_requests_to_real_gunicorn(processes: Processes, connection: Redis) -> None:
    port = free_port()
    processes.web(port)
    head = f"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n"
    non_utf8 = b'{"task": "diag.echo", "args": ["\xff\xfe"]}'
    status, body = raw_request(
        port, (head + f"Content-Type: application/json\r\nContent-Length: {len(non_utf8)}\r\n\r\n").encode() + non_utf8
    )
    assert status == 400 and json.loads(body)["error"]["code"] == "malformed_json"
    huge = 10 * 1024 * 1024
    announce_huge = f"Content-Type: application/json\r\nContent-Length: {huge}\r\n\r\n"
    status, body = raw_request(port, (head + announce_huge).encode())
    assert status == 413 and json.loads(body)["error"]["code"] == "payload_too_large"
    newline_token = f"GET /jobs/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}%0A\r\nConnection: close\r\n\r\n"
    status, body = raw_request(port, newline_token.encode())
    assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"
    assert not connection.keys("rq:job:*")
