"""The job hashes the service writes keep their exact layout: field order, names and values (times masked).

tests/data/job_hashes.json was recorded from the writer and the fire script
before they shared one template builder; a change to what a job or a
schedule run stores (or to RQ's Job.to_dict) shows up here as a diff.
Regenerate it only for a deliberate change: `python -m tests.test_job_hash_layout <redis url>`.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis

import service.tasks.diag  # noqa: F401 - registers diag.*
from service.jobs.enqueue import InternalRequest, enqueue
from service.schedules import operations as schedules
from service.schedules.runs import fire_manual
from service.schedules.store import read
from service.tasks.registry import REGISTRY, RetryPolicy, task

GOLDEN = Path(__file__).with_name("data") / "job_hashes.json"
T0 = datetime(2030, 1, 1, 3, 0, tzinfo=UTC)
# Values that differ per call (wall-clock times, random job ids).
VOLATILE = {"created_at", "enqueued_at", "dependency_id", "dependency_ids"}

if "layout.fixed" not in REGISTRY:

    @task("layout.fixed", retry=RetryPolicy(max=2, backoff=(5, 30)))
    def fixed(*args: Any) -> None:
        """Retried after 5 s, then 30 s."""

    @task("layout.exponential", retry=RetryPolicy(max=3, backoff="exponential"), queue="low")
    def exponential(*args: Any) -> None:
        """Retried with exponential backoff."""


def masked(connection: Redis, job_id: str) -> list[str]:
    """The job hash as `field=value` lines, volatile values masked, binary data as hex.

    A small hash keeps its fields in insertion order (what DUMP stores); a
    larger one is a hash table whose order Redis randomises, so it is sorted.
    """
    key = f"rq:job:{job_id}"
    rows = [f"{name.decode()}={shown(name.decode(), value)}" for name, value in connection.hgetall(key).items()]
    return rows if connection.object("encoding", key) in (b"ziplist", b"listpack") else sorted(rows)


def shown(name: str, value: bytes) -> str:
    if name in VOLATILE:
        return "<volatile>"
    if name == "data":
        return value.hex()
    if name == "meta":
        return json.dumps({k: "<volatile>" if k == "expires_at" else v for k, v in json.loads(value).items()})
    if name == "retry_intervals" and value != b"[5, 30]":
        intervals = json.loads(value)
        assert all(0.75 * 10 * 2**n <= s <= 1.25 * 10 * 2**n for n, s in enumerate(intervals)), intervals
        return f"<{len(intervals)} exponential>"
    return value.decode()


def stored_hashes(connection: Redis) -> dict[str, list[str]]:
    """Write one job of each kind the service writes and return their hashes."""
    connection.flushdb()
    jobs = {
        "plain": enqueue(connection, InternalRequest(task="diag.echo", args=[1, "a"], kwargs={"k": True})),
        "fixed_retry": enqueue(connection, InternalRequest(task="layout.fixed", args=[2])),
        "exponential_retry": enqueue(connection, InternalRequest(task="layout.exponential")),
        "options": enqueue(
            connection, InternalRequest(task="diag.echo", queue="high", timeout=7, result_ttl=9, ttl=60)
        ),
        "delayed": enqueue(connection, InternalRequest(task="diag.echo", delay=60)),
    }
    jobs["deferred"] = enqueue(connection, InternalRequest(task="diag.echo", depends_on=[jobs["delayed"].id]))
    found = {name: masked(connection, job.id) for name, job in jobs.items()}
    bodies = {
        "run_plain": {"task": "diag.echo", "args": [3], "kwargs": {"x": 1}, "interval": 60},
        "run_described": {"task": "diag.echo", "interval": 60, "description": "nightly", "queue": "low"},
        "run_pause_on_failure": {"task": "diag.echo", "interval": 60, "pause_on_failure": True},
        "run_fixed_retry": {"task": "layout.fixed", "interval": 60},
        "run_exponential_retry": {"task": "layout.exponential", "interval": 60},
    }
    for name, body in bodies.items():
        schedules.upsert(connection, name, body, now=T0)
        stored = read(connection, name)
        assert stored is not None
        [run] = fire_manual(connection, stored, [int(T0.timestamp() * 1000)], "manual", T0)
        found[name] = masked(connection, run["job_id"])
    return found


def test_job_and_run_hashes_keep_their_layout(connection: Redis) -> None:
    assert stored_hashes(connection) == json.loads(GOLDEN.read_text())


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(stored_hashes(Redis.from_url(sys.argv[1])), indent=1) + "\n")
