"""Schedules with real scheduler.py and worker.py processes: runs, downtime, overlap, several schedulers."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

import service.tasks.diag  # noqa: F401 - registers diag.*
from service.core.keys import SCHEDULER_LOCK_KEY as LEASE_KEY
from service.jobs.describe import describe
from service.jobs.operations import fetch
from service.schedules import operations as schedules
from tests.helpers import wait_until
from tests.processes import Processes, ServiceProcess

pytestmark = [pytest.mark.slow, pytest.mark.matrix]


def counters(connection: Redis, schedule_id: str) -> dict[str, int]:
    return schedules.get(connection, schedule_id)["counters"]


def run_jobs(connection: Redis, schedule_id: str) -> list[dict[str, Any]]:
    """The jobs of a schedule's recorded runs, oldest first."""
    records = reversed(schedules.runs(connection, schedule_id, 100)["runs"])
    return [describe(fetch(connection, r["job_id"])) for r in records if r["job_id"]]


def due_seconds(job_ids: list[str]) -> list[int]:
    return [int(job_id.rsplit("-", 1)[1]) for job_id in job_ids]


def queued_ids(connection: Redis, lane: str = "default") -> list[str]:
    return [i.decode() for i in connection.lrange(f"rq:queue:{lane}", 0, -1)]


def test_interval_runs_are_fresh_jobs_executed_by_a_worker_whatever_the_tz(
    connection: Redis, processes: Processes
) -> None:
    processes.scheduler(env={"TZ": "America/New_York"})
    processes.worker("default", env={"TZ": "Asia/Kolkata"})
    schedules.upsert(connection, "tick", {"task": "diag.echo", "args": ["t"], "interval": 1})
    at = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
    local_at = at.astimezone(timezone(timedelta(hours=-5))).isoformat()
    schedules.upsert(connection, "once", {"task": "diag.echo", "at": local_at})

    wait_until(lambda: len([j for j in run_jobs(connection, "tick") if j["status"] == "finished"]) >= 5, timeout=30)
    jobs = run_jobs(connection, "tick")
    ids = [j["id"] for j in jobs]
    assert len(set(ids)) == len(ids)
    seconds = due_seconds(ids)
    assert seconds == list(range(seconds[0], seconds[0] + len(seconds)))  # one run per second, none lost
    assert all(j["result"] == {"args": ["t"], "kwargs": {}} for j in jobs if j["status"] == "finished")
    assert all(
        j["scheduled_for"] == datetime.fromtimestamp(s, UTC).isoformat().replace("+00:00", "Z")
        for j, s in zip(jobs, seconds, strict=True)
    )

    once = wait_until(lambda: run_jobs(connection, "once"), timeout=20)
    assert [j["id"] for j in once] == [f"once-{int(at.timestamp())}"]
    assert schedules.get(connection, "once")["next_run_at"] is None


def test_downtime_coalesces_or_misses_and_accounts_for_every_due_time(connection: Redis, processes: Processes) -> None:
    first = processes.scheduler(name="before")
    schedules.upsert(connection, "co", {"task": "diag.echo", "interval": 1, "overlap": "allow"})
    body = {"task": "diag.echo", "interval": 1, "coalesce": False, "overlap": "allow", "misfire_grace_time": 2}
    schedules.upsert(connection, "each", body)
    wait_until(lambda: counters(connection, "co")["runs"] >= 2, timeout=30)
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=15) == 0
    stopped_at = time.time()
    wait_until(lambda: time.time() > stopped_at + 6, timeout=10, what="6 due times to pass unattended")
    processes.scheduler(name="after")
    wait_until(lambda: counters(connection, "co")["coalesced"] >= 3, timeout=30)
    wait_until(lambda: counters(connection, "each")["missed"] >= 2, timeout=30)

    co = counters(connection, "co")
    assert co["missed"] == 0
    each = counters(connection, "each")
    assert each["coalesced"] == 0
    # Every due time of "each" is recorded exactly once, as a run or as missed.
    records = schedules.runs(connection, "each", 100)["runs"]
    seconds = sorted(
        int(datetime.fromisoformat(r["scheduled_for"].replace("Z", "+00:00")).timestamp()) for r in records
    )
    assert seconds == list(range(seconds[0], seconds[0] + len(seconds)))
    assert {r["status"] for r in records} >= {"missed", "queued"}


def wait_for_runs(connection: Redis, schedule_id: str, count: int) -> list[dict[str, Any]]:
    def ended() -> list[dict[str, Any]] | None:
        jobs = [j for j in run_jobs(connection, schedule_id) if j["ended_at"]]
        return jobs if len(jobs) >= count else None

    return wait_until(ended, timeout=90, interval=0.2, what=f"{count} ended runs of {schedule_id}")


def never_overlapping(jobs: list[dict[str, Any]]) -> bool:
    spans = sorted((j["started_at"], j["ended_at"]) for j in jobs if j["started_at"])
    return all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))


def test_overlap_skip_buffer_one_and_cancel_other_with_a_slow_task(connection: Redis, processes: Processes) -> None:
    processes.scheduler()
    for lane in ("high", "default", "low"):
        processes.worker(lane, name=f"worker-{lane}")
    slow = {"task": "diag.sleep", "args": [2.5], "interval": 1}
    schedules.upsert(connection, "skip", {**slow, "queue": "high", "overlap": "skip"})
    schedules.upsert(connection, "buffer", {**slow, "queue": "default", "overlap": "buffer_one"})
    schedules.upsert(connection, "cancel", {**slow, "queue": "low", "overlap": "cancel_other"})

    skip = wait_for_runs(connection, "skip", 2)
    assert never_overlapping(skip)
    assert counters(connection, "skip")["skipped"] >= 2
    assert all(j["status"] == "finished" for j in skip)

    buffer = wait_for_runs(connection, "buffer", 3)
    assert never_overlapping(buffer)
    assert counters(connection, "buffer")["dropped"] >= 1
    kinds = [r.get("kind") for r in schedules.runs(connection, "buffer", 100)["runs"] if r["job_id"]]
    assert "buffered" in kinds

    cancel = wait_for_runs(connection, "cancel", 2)
    assert {j["status"] for j in cancel[:-1]} <= {"stopped", "canceled"}
    assert never_overlapping([j for j in cancel if j["status"] == "finished"])


def test_overlap_allow_lets_runs_of_one_schedule_run_at_once(connection: Redis, processes: Processes) -> None:
    processes.scheduler()
    processes.worker("default", name="w1")
    processes.worker("default", name="w2")
    schedules.upsert(connection, "allow", {"task": "diag.sleep", "args": [2.5], "interval": 1, "overlap": "allow"})
    jobs = wait_for_runs(connection, "allow", 3)
    assert not never_overlapping(jobs)
    assert counters(connection, "allow")["skipped"] == 0


def leader(connection: Redis, schedulers: list[ServiceProcess]) -> ServiceProcess:
    owner = wait_until(lambda: connection.get(LEASE_KEY), timeout=20).decode()
    return wait_until(lambda: next((s for s in schedulers if f"lease owner {owner}" in s.output()), None), timeout=10)


@pytest.mark.parametrize("count", [2, 3])
def test_several_schedulers_fire_each_due_time_exactly_once_across_a_leader_kill(
    connection: Redis, processes: Processes, count: int
) -> None:
    schedulers = [processes.scheduler(name=f"scheduler-{n}") for n in range(count)]
    ids = ["ha-a", "ha-b", "ha-c"]
    for schedule_id in ids:
        schedules.upsert(
            connection, schedule_id, {"task": "diag.echo", "interval": 1, "coalesce": False, "overlap": "allow"}
        )
    total = lambda: sum(counters(connection, i)["runs"] for i in ids)  # noqa: E731
    wait_until(lambda: total() >= 24, timeout=60, interval=0.2)
    first = leader(connection, schedulers)
    first.signal(signal.SIGKILL)
    killed_at = total()
    wait_until(lambda: total() >= killed_at + 36, timeout=90, interval=0.2, what="60 runs in all")
    assert leader(connection, [s for s in schedulers if s is not first]) is not first

    queue = queued_ids(connection)
    assert len(queue) == len(set(queue))  # no due time became two jobs
    for schedule_id in ids:
        seconds = sorted(due_seconds([j for j in queue if j.startswith(schedule_id + "-")]))
        assert seconds == list(range(seconds[0], seconds[0] + len(seconds)))  # none lost across the kill
        assert counters(connection, schedule_id)["runs"] == len(seconds)


def test_scheduler_syncs_the_declared_file_at_start_and_refuses_a_bad_one(
    connection: Redis, processes: Processes, tmp_path: Path
) -> None:
    good = tmp_path / "schedules.toml"
    good.write_text('[schedules.declared]\ntask = "diag.echo"\ninterval = 1\n')
    processes.scheduler(name="first", env={"SCHEDULES_FILE": str(good)})
    fired = lambda: connection.exists("svc:schedule:declared") and counters(connection, "declared")["runs"] >= 1  # noqa: E731
    wait_until(fired, timeout=20, what="the declared schedule to fire")
    spec_before = connection.hget("svc:schedule:declared", "spec")
    second = processes.scheduler(name="second", env={"SCHEDULES_FILE": str(good)})
    wait_until(lambda: "declared schedules synced" in second.output(), timeout=20)
    assert connection.hget("svc:schedule:declared", "spec") == spec_before
    assert [s["id"] for s in schedules.list_schedules(connection)["schedules"]] == ["declared"]

    bad = tmp_path / "bad.toml"
    bad.write_text('[schedules.broken]\ntask = "diag.echo"\ncron = "every minute"\n')
    refused = processes.scheduler(name="bad", env={"SCHEDULES_FILE": str(bad)})
    assert refused.wait(timeout=20) == 2
    assert "broken" in refused.output() and "cron" in refused.output()
    assert not connection.exists("svc:schedule:broken")
