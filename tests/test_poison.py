"""Poison jobs: whatever a lane or a job hash holds, the job fails alone with a reason and the worker goes on.

Damaged jobs are planted straight into a real Redis next to a real worker
process (as anyone with Redis access, or a bug, could write them). After
each, a normal diag.echo job must still run, the lanes and the worker's
claimed list must empty, nothing named in Redis may be imported, and a job
with a valid id must read `failed` with its reason through the API.
"""

from __future__ import annotations

import http.server
import json
import pickle
import threading
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from service.core.lanes import LANES
from service.jobs import damage
from service.jobs.model import ServiceQueue
from tests.api import Api
from tests.conftest import AUTH
from tests.helpers import wait_until
from tests.processes import Processes, ServiceProcess
from tests.worker_fixtures import FAST, enqueue, lanes_and_claims_empty

ECHO = ("diag.echo", None, ["hello"], {})


class Touch:
    """Unpickling this runs `touch <path>`: a pickle planted as job data must never be loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (f"touch {self.path}",))


def job_fields(connection: Redis, lane: str = "default", **changes: bytes | None) -> dict[str, bytes]:
    """The hash a queued diag.echo job has in `lane`, with `changes` (None removes a field)."""
    job = ServiceQueue(lane, connection=connection).create_job("diag.echo", args=["hello"])
    job.origin = lane
    fields = {k: v if isinstance(v, bytes) else str(v).encode() for k, v in job.to_dict().items()}
    fields["status"] = b"queued"
    for name, value in changes.items():
        if value is None:
            fields.pop(name, None)
        else:
            fields[name] = value
    return {k: v for k, v in fields.items() if v != b""}


def plant(connection: Redis, job_id: bytes | str, fields: dict[str, bytes] | None, lane: str = "default") -> None:
    """Write a job hash (if any) and push its id into `lane`, ringing the doorbell, in one transaction."""
    with connection.pipeline() as pipe:
        if fields:
            pipe.hset(b"rq:job:" + (job_id if isinstance(job_id, bytes) else job_id.encode()), mapping=fields)
        pipe.rpush(f"rq:queue:{lane}", job_id)
        pipe.rpush(f"svc:doorbell:{lane}", 1)
        pipe.execute()


def echo_still_runs(connection: Redis, worker: ServiceProcess) -> None:
    """A normal job runs to its end, the lanes and claimed lists empty, and the worker is alive."""
    job = enqueue(connection, "diag.echo", "still here")
    wait_until(lambda: job.get_status(refresh=True) == "finished", timeout=30, what="a normal job after the poison")
    wait_until(lambda: lanes_and_claims_empty(connection), timeout=10, what="lanes and claimed lists to empty")
    assert worker.alive()


def read(client: FlaskClient, job_id: str) -> dict[str, Any]:
    response = client.get(f"/jobs/{job_id}", headers=AUTH)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def failed_with(client: FlaskClient, job_id: str) -> str:
    """Wait until job `job_id` reads failed through the API; return its error."""
    job = wait_until(lambda: (j := read(client, job_id))["status"] == "failed" and j, timeout=30, what="failed")
    assert job["error"], job
    return str(job["error"])


def discarded(client: FlaskClient, lane: str | None = None) -> float:
    """The jobs_discarded counter of `lane` (of all lanes, and of ids found outside a claim, when None)."""
    text = client.get("/metrics", headers=AUTH).get_data(as_text=True)
    prefix = "jobs_discarded_total{" + (f'queue="{lane}"}}' if lane else "")
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


@pytest.fixture
def worker(processes: Processes, marker: Path) -> ServiceProcess:
    """A real no-fork worker on every lane, with fast heartbeats; tests.poison_marker leaves `marker` if imported."""
    return processes.worker(*FAST, env={"POISON_MARKER": str(marker)})


# -- ids no job can have --------------------------------------------------------------------------------------

BAD_IDS = [b"run-abc\n-1", b"a\x00b", b"x" * 10_000, b"..", b"../../etc/passwd", b"a:b", b"\xff\xfe", b"a b", b""]


@pytest.mark.parametrize("with_hash", [True, False], ids=["with-hash", "bare-id"])
def test_ids_no_job_can_have_are_removed_counted_and_the_worker_goes_on(
    connection: Redis, client: FlaskClient, worker: ServiceProcess, with_hash: bool
) -> None:
    before = discarded(client)
    for job_id in BAD_IDS:
        plant(connection, job_id, job_fields(connection) if with_hash and job_id else None)
    echo_still_runs(connection, worker)
    wait_until(lambda: discarded(client) - before == len(BAD_IDS), timeout=10, what="every bad id counted")
    if with_hash:  # the hash under a bad id is marked failed and left to expire
        statuses = {connection.hget(b"rq:job:" + i, "status") for i in BAD_IDS if i}
        assert statuses == {b"failed"} and 0 < connection.ttl(b"rq:job:run-abc\n-1")
    assert not connection.keys("rq:execution:*") and not connection.zcard("rq:wip:default")


def test_a_key_under_a_job_id_that_is_not_a_hash_is_left_alone_and_the_worker_goes_on(
    connection: Redis, client: FlaskClient, worker: ServiceProcess
) -> None:
    string_id, list_id = str(uuid.uuid4()), str(uuid.uuid4())
    connection.set(f"rq:job:{string_id}", "not a job")
    connection.rpush(f"rq:job:{list_id}", "not", "a", "job")
    connection.set(b"rq:job:bad\nid", "not a job either")
    for job_id in (string_id, list_id, "bad\nid"):
        plant(connection, job_id, None)
    echo_still_runs(connection, worker)
    assert connection.get(f"rq:job:{string_id}") == b"not a job" and connection.llen(f"rq:job:{list_id}") == 3


# -- damaged job hashes ------------------------------------------------------------------------------------------

DAMAGED_FIELDS = [
    ("timeout", b"abc"),
    ("timeout", b"-5"),
    ("timeout", b"1e309"),
    ("created_at", b"yesterday"),
    ("enqueued_at", b"\xff\xfe"),
    ("result_ttl", b"forever"),
    ("failure_ttl", b"99999999999999999999999"),
    ("retries_left", b"-1"),
    ("retry_intervals", b"[1, 'two']"),
    ("dependency_ids", b'["../x"]'),
    ("meta", b"\x80\x04not json"),
    ("meta", b"[1, 2]"),
    ("meta", b'{"expires_at": "soon"}'),
    ("description", b"\xc3\x28"),
    ("exc_info", b"\xff"),
    ("attempts", b"many"),
    ("success_callback_name", b"os.system"),
    ("failure_callback_name", b"tests.poison_marker.touch"),
    ("stopped_callback_name", b"builtins.exec"),
    ("success_callback_timeout", b"0"),
    ("origin", b"urgent"),
    ("origin", b"high"),
]


def test_each_damaged_field_fails_its_job_naming_the_field(
    connection: Redis, client: FlaskClient, worker: ServiceProcess, marker: Path
) -> None:
    planted = {str(uuid.uuid4()): (field, value) for field, value in DAMAGED_FIELDS}
    for job_id, (field, value) in planted.items():
        plant(connection, job_id, job_fields(connection, **{field: value}))
    for job_id, (field, value) in planted.items():
        error = failed_with(client, job_id)
        assert "damaged" in error and field in error, (field, value, error)
    echo_still_runs(connection, worker)
    assert not marker.exists()


def test_a_damaged_job_claimed_in_the_call_that_stores_a_success_fails_alone(
    connection: Redis, client: FlaskClient, processes: Processes, marker: Path
) -> None:
    """The worker's call that finishes one job claims the next: the next one's damage (its claim raises)
    leaves the first one finished."""
    first = enqueue(connection, "diag.echo", "first").id
    damaged = str(uuid.uuid4())
    plant(connection, damaged, job_fields(connection, attempts=b"many"))
    worker = processes.worker(*FAST, env={"POISON_MARKER": str(marker)})
    error = failed_with(client, damaged)
    assert "damaged" in error and "attempts" in error, error
    assert read(client, first)["status"] == "finished"
    echo_still_runs(connection, worker)


@pytest.mark.parametrize(
    ("status", "expected"),
    [(b"bogus", "failed"), (b"\xff", "failed"), (None, "failed"), (b"finished", "finished"), (b"canceled", "canceled")],
)
def test_a_job_in_a_lane_that_is_not_queued_is_failed_if_damaged_and_left_alone_otherwise(
    connection: Redis, client: FlaskClient, worker: ServiceProcess, status: bytes | None, expected: str
) -> None:
    job_id = str(uuid.uuid4())
    plant(connection, job_id, job_fields(connection, status=status))
    echo_still_runs(connection, worker)
    assert read(client, job_id)["status"] == expected


def stored_data(kind: str, value: Any, marker: Path) -> bytes | None:
    """A job's `data` field of `kind`; '{marker}' in JSON strings becomes the marker file's path."""
    if kind == "missing":
        return None
    if kind == "pickle":
        return zlib.compress(pickle.dumps(("diag.echo", None, [Touch(marker)], {})))
    if kind == "json":
        return zlib.compress(json.dumps(value).replace("{marker}", str(marker)).encode())
    return zlib.compress(value) if kind == "zlib" else value


DAMAGED_DATA = [
    ("missing", None),
    ("raw", b"not zlib, not json"),
    ("zlib", b"\x00\x01 not json"),
    ("json", {"task": "diag.echo"}),
    ("json", ["diag.echo", None, {"a": 1}, []]),
    ("json", ["diag.echo", "instance", [], {}]),
    ("json", [["diag.echo"], None, [], {}]),
    ("json", ["os.system", None, ["touch {marker}"], {}]),
    ("json", ["exec", None, ["open('{marker}', 'w')"], {}]),
    ("json", ["tests.poison_marker.touch", None, [], {}]),
    ("pickle", None),
]


def test_job_data_that_is_not_a_registered_json_call_fails_without_running_anything(
    connection: Redis, client: FlaskClient, worker: ServiceProcess, marker: Path
) -> None:
    planted = {str(uuid.uuid4()): (kind, value) for kind, value in DAMAGED_DATA}
    for job_id, (kind, value) in planted.items():
        plant(connection, job_id, job_fields(connection, data=stored_data(kind, value, marker)))
    for job_id, (kind, value) in planted.items():
        error = failed_with(client, job_id)
        assert "not JSON" in error or "not a registered task" in error or "no data" in error, (kind, value, error)
    echo_still_runs(connection, worker)
    assert not marker.exists()


def test_dependents_that_name_code_or_are_no_job_never_run_code_and_the_parent_finishes(
    connection: Redis, client: FlaskClient, worker: ServiceProcess, marker: Path
) -> None:
    parent_id, child_id = str(uuid.uuid4()), str(uuid.uuid4())
    code = stored_data("json", ["os.system", None, ["touch {marker}"], {}], marker)
    connection.hset(f"rq:job:{child_id}", mapping=job_fields(connection, status=b"deferred", data=code))
    connection.sadd(f"rq:job:{parent_id}:dependents", "bad\nid", child_id, "no-such-job")
    plant(connection, parent_id, job_fields(connection))
    wait_until(lambda: read(client, parent_id)["status"] == "finished", timeout=30)
    echo_still_runs(connection, worker)
    assert read(client, child_id)["status"] in ("deferred", "failed") and not marker.exists()


# -- a finish step that raises ----------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["testing.returns_set", "testing.returns_nan"])
def test_a_result_that_is_not_json_fails_the_job_within_its_attempts(
    connection: Redis, client: FlaskClient, worker: ServiceProcess, task: str
) -> None:
    job = Api(client).enqueue(task=task, retry={"max": 1, "backoff": [0]})
    error = failed_with(client, job["id"])
    assert "ResultRefused: the task returned a value that is not JSON" in error
    assert read(client, job["id"])["attempts"] == 2
    echo_still_runs(connection, worker)


def test_a_result_too_large_to_store_fails_the_job(
    connection: Redis, client: FlaskClient, worker: ServiceProcess
) -> None:
    job = enqueue(connection, "diag.echo", "x" * (17 * 1024 * 1024))
    error = failed_with(client, job.id)
    assert "ResultRefused: the task's result is" in error and "at most 16777216 are stored" in error
    echo_still_runs(connection, worker)


def test_meta_that_is_not_json_when_the_retry_saves_it_fails_the_job_once(
    connection: Redis, client: FlaskClient, worker: ServiceProcess
) -> None:
    job = Api(client).enqueue(task="testing.bad_meta", retry={"max": 3, "backoff": [0]})
    error = failed_with(client, job["id"])
    assert "not JSON serializable" in error
    echo_still_runs(connection, worker)
    assert read(client, job["id"])["attempts"] == 1  # failed alone, never put back


def test_webhooks_stored_in_a_job_hash_are_never_called(
    connection: Redis, client: FlaskClient, worker: ServiceProcess
) -> None:
    hits: list[str] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(204)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        hooks = json.dumps([{"url": url, "job_status": status, "method": method}
                            for status in ("finished", "failed") for method in ("GET", "POST")]).encode()  # fmt: skip
        job_id = str(uuid.uuid4())
        plant(connection, job_id, job_fields(connection, webhooks=hooks))
        wait_until(lambda: read(client, job_id)["status"] == "finished", timeout=30)
        echo_still_runs(connection, worker)
    finally:
        server.shutdown()
        server.server_close()
    assert hits == []


def test_a_forking_worker_fails_damaged_jobs_alone_too(
    connection: Redis, client: FlaskClient, processes: Processes, marker: Path
) -> None:
    forking = processes.worker("--fork", *FAST, env={"POISON_MARKER": str(marker)})
    damaged = {str(uuid.uuid4()): job_fields(connection, **change) for change in (
        {"timeout": b"soon"}, {"data": stored_data("pickle", None, marker)}, {"failure_callback_name": b"os.system"},
        {"origin": b"high"},
    )}  # fmt: skip
    for job_id, fields in damaged.items():
        plant(connection, job_id, fields)
    plant(connection, b"bad\nid", job_fields(connection))
    returns_set = Api(client).enqueue(task="testing.returns_set")
    for job_id in [*damaged, returns_set["id"]]:
        failed_with(client, job_id)
    echo_still_runs(connection, forking)
    assert not marker.exists()


# -- the reaper ---------------------------------------------------------------------------------------------------


def claimed_by_dead_worker(connection: Redis, worker_name: str, entries: list[bytes]) -> None:
    """Make `entries` the claimed list of a worker that died (it has no liveness key)."""
    connection.sadd("svc:claimers", worker_name)
    connection.rpush(f"svc:claimed:{worker_name}", *entries)


def started(connection: Redis, fields: dict[str, bytes]) -> bytes:
    """Store a job that a worker had started (it is in no lane); return its id."""
    job_id = str(uuid.uuid4()).encode()
    connection.hset(b"rq:job:" + job_id, mapping={**fields, "status": b"started"})
    return job_id


def test_a_dead_workers_damaged_claims_do_not_stop_the_reaper_recovering_other_jobs(
    connection: Redis, client: FlaskClient, processes: Processes, marker: Path
) -> None:
    normal_a, normal_b = started(connection, job_fields(connection)), started(connection, job_fields(connection))
    damaged = started(connection, job_fields(connection, timeout=b"soon", success_callback_name=b"os.system"))
    claimed_by_dead_worker(connection, "ghost-1", [b"bad\nid", b"\xff\xfe", damaged, normal_a])
    claimed_by_dead_worker(connection, "ghost-2", [b"x" * 10_000, normal_b])
    before = discarded(client, "?")
    worker = processes.worker(*FAST, env={"POISON_MARKER": str(marker)})
    for job_id in (normal_a, normal_b):
        wait_until(lambda i=job_id: read(client, i.decode())["status"] == "finished", timeout=30, what="recovery")
    assert "damaged" in failed_with(client, damaged.decode())
    wait_until(lambda: not connection.smembers("svc:claimers") - {w.encode() for w in worker_names(connection)},
               timeout=10, what="the dead workers to be forgotten")  # fmt: skip
    assert not connection.exists("svc:claimed:ghost-1", "svc:claimed:ghost-2")
    assert discarded(client, "?") - before == 3
    echo_still_runs(connection, worker)
    assert not marker.exists()


def worker_names(connection: Redis) -> list[str]:
    return [key.decode().split(":")[2] for key in connection.keys("svc:alive:*")]


# -- fuzz: batches of damaged jobs next to a real worker ------------------------------------------------------------

GARBAGE = st.one_of(
    st.sampled_from([b"-1", b"0", b"1", b"1e309", b"nan", b"\x00", b"9" * 30, b"[]", b"{}", b"null", b"\xff\xfe",
                     b'"x"', b"[1, 2, 3]", b'{"expires_at": "soon"}', b"os.system", b"builtins.exec",
                     b"tests.poison_marker.touch", b"high", b"queued", b"finished", b"x" * 5000]),
    st.binary(min_size=1, max_size=24),
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24).map(str.encode),
)  # fmt: skip
DATA = st.sampled_from(["missing", "pickle", ("raw", b"not zlib"), ("zlib", b"\x80 not json"),
                        ("json", ["os.system", None, ["touch {marker}"], {}]), ("json", ["diag.echo", None, {}, []]),
                        ("json", ["tests.poison_marker.touch", None, [], {}]), ("raw", json.dumps(ECHO).encode()),
                        ("json", list(ECHO))])  # fmt: skip
# Fields whose valid values would legitimately keep a job around (retries, repeats, delay): only garbage there.
KEEPS_A_JOB = {
    "retries_left",
    "repeats_left",
    "retry_intervals",
    "repeat_intervals",
    "status",
    "result_ttl",
    "failure_ttl",
}
FIELD = st.sampled_from(sorted({*damage.FIELDS, "webhooks", "no_such_field"} - {"data"}))
CHANGE = st.tuples(FIELD, st.one_of(GARBAGE, st.none())).filter(
    lambda change: change[0] not in KEEPS_A_JOB or change[1] is not None and not accepted(*change)
)
VALID_ID = st.uuids().map(lambda u: str(u).encode())
BAD_ID = st.one_of(st.sampled_from(BAD_IDS), st.binary(min_size=1, max_size=30).filter(lambda b: not good_id(b)))


def accepted(field: str, value: bytes) -> bool:
    try:
        return bool(damage.FIELDS[field][1](value))
    except Exception:
        return False


def good_id(raw_id: bytes) -> bool:
    try:
        return damage.is_job_id(raw_id.decode())
    except UnicodeDecodeError:
        return False


@st.composite
def damaged_jobs(draw: st.DrawFn) -> tuple[bytes, str, dict[str, Any], Any]:
    """(id, lane, field changes, data) of one damaged job; a bad id, or a valid one with damaged fields."""
    job_id = draw(st.one_of(VALID_ID, BAD_ID))
    changes = dict(draw(st.lists(CHANGE, max_size=4)))
    data = draw(st.one_of(st.none(), DATA))
    return job_id, draw(st.sampled_from(LANES)), changes, data


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(damaged_jobs(), min_size=1, max_size=6))
def test_fuzz_damaged_jobs_each_fail_alone_and_a_normal_job_still_runs(
    connection: Redis, client: FlaskClient, worker: ServiceProcess, marker: Path, batch: list[Any]
) -> None:
    before = discarded(client)
    for job_id, lane, changes, data in batch:
        fields = job_fields(connection, lane, **changes)
        if data is not None:
            kind, value = data if isinstance(data, tuple) else (data, None)
            fields.pop("data", None)
            if (stored := stored_data(kind, value, marker)) is not None:
                fields["data"] = stored
        plant(connection, job_id, fields, lane)
    echo_still_runs(connection, worker)
    bad = [job_id for job_id, *_ in batch if not good_id(job_id)]
    wait_until(lambda: discarded(client) - before == len(bad), timeout=10,
               what="every bad id counted")  # fmt: skip
    for job_id, _, changes, _ in batch:
        if good_id(job_id):
            job = read(client, job_id.decode())  # never a 500, whatever the hash holds
            assert job["status"] in ("finished", "failed"), (job, changes)
            assert job["status"] == "finished" or job["error"], job
    assert not marker.exists()


def test_the_scheduler_never_imports_a_queue_class_named_in_a_job(
    connection: Redis, processes: Processes, marker: Path
) -> None:
    job = ServiceQueue("default", connection=connection).create_job("diag.echo", args=["later"])
    job.origin = "default"
    job.meta = {"queue_class_name": "tests.poison_marker.touch"}
    job.save()
    connection.zadd("rq:scheduler:scheduled_jobs", {job.id: 1})  # a stock rq-scheduler job, long due
    processes.scheduler(env={"POISON_MARKER": str(marker)})
    wait_until(lambda: connection.lrange("rq:queue:default", 0, -1) == [job.id.encode()], timeout=30)
    assert not marker.exists()


# -- shared keys planted with another Redis type --------------------------------------------------------------


@pytest.mark.parametrize("which", ["queue_key", "waiting_key", "started_key", "groups_key"])
def test_a_lane_key_planted_with_another_type_skips_that_lane_only_naming_the_key(
    connection: Redis, worker: ServiceProcess, which: str
) -> None:
    """One planted key used to stop the worker on every lane (a traceback each second); now only its lane waits."""
    from service.core import keys

    waiting = None if which == "queue_key" else enqueue(connection, "diag.echo", "high", lane="high")
    planted = getattr(keys, which)("high")
    connection.set(planted, "planted")
    if waiting is None:
        waiting = enqueue(connection, "diag.echo", "first", lane="low")  # the claim tries `high` first
    jobs = [enqueue(connection, "diag.echo", n, lane=lane) for n, lane in enumerate(("default", "low", "default"))]
    for job in jobs:
        wait_until(lambda job=job: job.get_status(refresh=True) == "finished", timeout=30, what=f"{job.id} to run")
    wait_until(lambda: "lane 'high' skipped for 60 s" in worker.output(), timeout=10, what="the warning")
    assert f"{planted} holds a string, not a" in worker.output()
    assert "unexpected error" not in worker.output()
    assert connection.get(planted) == b"planted"  # left for the operator: the service deletes nothing it did not write
    if which != "queue_key":  # the skipped lane's job waits untouched, neither started nor failed
        assert waiting.get_status(refresh=True) == "queued" and connection.hget(waiting.key, "attempts") in (None, b"0")
        assert connection.lrange(keys.queue_key("high"), 0, -1) == [waiting.id.encode()]
    assert worker.alive()


def test_a_doorbell_planted_with_another_type_is_cleared_and_every_lane_goes_on(
    connection: Redis, worker: ServiceProcess
) -> None:
    """A lane's doorbell is only a wake-up hint the workers clear whenever the lanes are empty."""
    from service.core import keys

    connection.set(keys.doorbell_key("high"), "planted")
    wait_until(lambda: connection.exists(keys.doorbell_key("high")) == 0, timeout=10, what="the doorbell cleared")
    echo_still_runs(connection, worker)
    job = enqueue(connection, "diag.echo", "high", lane="high")
    wait_until(lambda: job.get_status(refresh=True) == "finished", timeout=30, what="a job in high")
    assert "unexpected error" not in worker.output()
