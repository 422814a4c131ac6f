"""Prefetch: a backlog of short jobs runs several to a Redis call, and nothing a user checks changes but timing."""

from __future__ import annotations

import signal
from datetime import timedelta

import pytest
from redis import Redis
from rq.executions import Execution
from rq.utils import now, utcformat

import service.tasks.diag  # noqa: F401 - registers diag.*
from service.core import keys
from service.jobs.model import ServiceJob
from service.workers import limits
from service.workers.claim import Claim, Claimer
from service.workers.finish import Finisher
from service.workers.reaper import Reaper
from tests.helpers import wait_until
from tests.processes import Processes
from tests.worker_fixtures import enqueue, enqueue_many, kill_group, lanes_and_claims_empty, recorded, start_worker

TTL = 100


def finished_ids(connection: Redis, lane: str = "default") -> set[str]:
    return {member.decode() for member in connection.zrange(keys.finished_key(lane), 0, -1)}


def claimed_ids(connection: Redis) -> list[bytes]:
    """Every worker's claimed jobs."""
    return [job_id for key in connection.scan_iter(keys.claimed_key("*")) for job_id in connection.lrange(key, 0, -1)]


def test_a_prefetched_job_reads_queued_and_a_dead_workers_batch_goes_back_in_order(connection: Redis) -> None:
    jobs = enqueue_many(connection, "diag.echo", [("default", (n,)) for n in range(5)])
    claimer = Claimer(connection, "w1")
    claim = claimer.claim(["default"], TTL, prefetch=3)
    assert isinstance(claim, Claim) and claim.execution_id and claim.job_id == jobs[0].id
    assert [more.job_id for more in claim.more] == [job.id for job in jobs[1:4]]
    assert [connection.hget(job.key, "status") for job in jobs] == [b"started"] + [b"queued"] * 4
    assert connection.zcard(keys.started_key("default")) == 1  # only the started one: RQ counts it running
    assert connection.lrange(keys.claimed_key("w1"), 0, -1) == [job.id.encode() for job in jobs[:4]]
    assert connection.llen(keys.queue_key("default")) == 1
    Reaper(connection).reap()  # w1 has no heartbeat: dead
    assert connection.lrange(keys.queue_key("default"), 0, -1) == [job.id.encode() for job in jobs]
    assert [connection.hget(job.key, "status") for job in jobs] == [b"queued"] * 5
    assert connection.llen(keys.claimed_key("w1")) == 0


def outcome_of_prefetched(connection: Redis, claim: Claim) -> list[int]:
    """Store the success of prefetched `claim` as the worker does: its start with its outcome."""
    job = ServiceJob(claim.job_id, connection=connection)
    job.restore(claim.raw)
    job.started_at = now()
    job.ended_at = job.started_at + timedelta(milliseconds=1)
    job._result = {"ok": 1}
    execution = Execution("e2", job.id, connection, worker_name="w1")
    finisher = Finisher(connection, "w1", keys.worker_key("w1"))
    slots = (limits.NO_SLOT, limits.NO_SLOT, "")
    part = finisher.outcome(job, execution, 500, slots, "diag.echo", start=(utcformat(job.started_at), 1))
    dependents, _ = finisher.finish(job, part)
    return dependents


def test_a_prefetched_jobs_outcome_stores_its_start_unless_it_was_canceled_meanwhile(connection: Redis) -> None:
    jobs = enqueue_many(connection, "diag.echo", [("default", (n,)) for n in range(3)])
    claim = Claimer(connection, "w1").claim(["default"], TTL, prefetch=2)
    assert isinstance(claim, Claim) and len(claim.more) == 2
    assert outcome_of_prefetched(connection, claim.more[0]) == [0]
    stored = connection.hgetall(jobs[1].key)
    assert stored[b"status"] == b"finished" and stored[b"worker_name"] == b"w1" and stored[b"attempts"] == b"1"
    assert stored[b"started_at"] <= stored[b"ended_at"] and connection.ttl(jobs[1].key) > 490
    connection.hset(jobs[2].key, "status", "canceled")  # what the API does to a job it reads as queued
    assert outcome_of_prefetched(connection, claim.more[1]) == [0]
    assert connection.hget(jobs[2].key, "status") == b"canceled" and not connection.exists(keys.results_key(jobs[2].id))
    assert connection.lrange(keys.claimed_key("w1"), 0, -1) == [jobs[0].id.encode()]
    assert finished_ids(connection) == {jobs[1].id}


@pytest.mark.parametrize("prefetch", [(), ("--prefetch", "0")], ids=["default", "off"])
def test_a_backlog_of_short_jobs_is_stored_as_one_job_at_a_time_would_be(
    connection: Redis, processes: Processes, prefetch: tuple[str, ...]
) -> None:
    jobs = enqueue_many(connection, "diag.echo", [("default", (n,)) for n in range(300)])
    connection.config_resetstat()
    worker = start_worker(processes, "--burst", *prefetch)
    assert worker.wait(timeout=60) == 0
    calls = int(connection.info("commandstats")["cmdstat_evalsha"]["calls"])
    if prefetch:
        assert calls >= len(jobs)  # --prefetch 0: a call for every job
    else:
        assert calls < len(jobs) * 3 / 4  # several jobs a call (about 5 in a quiet run; fewer when descheduled)
    assert finished_ids(connection) == {job.id for job in jobs}
    names = set()
    for job in jobs:
        stored = connection.hgetall(job.key)
        assert stored[b"status"] == b"finished" and stored[b"attempts"] == b"1"
        assert stored[b"started_at"] <= stored[b"ended_at"]
        names.add(stored[b"worker_name"])
        assert job.latest_result().return_value == {"args": [job.args[0]], "kwargs": {}}
    assert len(names) == 1 and b"" not in names  # the worker's name, as one job at a time would store it
    assert connection.zcard(keys.started_key("default")) == 0 and lanes_and_claims_empty(connection)
    assert connection.hget(keys.METRICS_KEY, "jobs_finished|diag.echo|default") == b"300"


def test_a_long_job_after_short_ones_holds_back_no_outcome_and_no_job(connection: Redis, processes: Processes) -> None:
    before = enqueue_many(connection, "diag.echo", [("default", (n,)) for n in range(200)])
    long = enqueue(connection, "workertest.hold", "long")
    after = enqueue_many(connection, "diag.echo", [("default", (n,)) for n in range(20)])
    start_worker(processes, name="first")
    wait_until(lambda: recorded(connection, "long"), timeout=30, what="the long job to run")
    # While it runs: every job before it is stored, it reads started, the jobs after it wait in the lane.
    wait_until(lambda: claimed_ids(connection) == [long.id.encode()], timeout=10, what="only it claimed")
    assert connection.hget(long.key, "status") == b"started"
    assert finished_ids(connection) == {job.id for job in before}
    assert connection.lrange(keys.queue_key("default"), 0, -1) == [job.id.encode() for job in after]
    start_worker(processes, name="second")  # the jobs after it run beside it
    wait_until(lambda: finished_ids(connection) >= {job.id for job in after}, timeout=30, what="the others to end")
    connection.set("diag:long:release", 1)
    wait_until(lambda: connection.hget(long.key, "status") == b"finished", timeout=30, what="the long job to end")


def test_a_warm_stop_mid_backlog_stores_the_outcome_of_every_job_that_ran(
    connection: Redis, processes: Processes
) -> None:
    jobs = enqueue_many(connection, "workertest.note", [("default", ("ran",)) for _ in range(3000)])
    worker = start_worker(processes)
    wait_until(lambda: len(recorded(connection, "ran")) >= 300, timeout=30, what="a tenth of the jobs to run")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    ran = set(recorded(connection, "ran"))
    assert len(ran) < len(jobs)  # stopped mid-backlog
    assert finished_ids(connection) == ran
    statuses = {job.id: connection.hget(job.key, "status") for job in jobs}
    assert {statuses[job_id] for job_id in ran} == {b"finished"}
    waiting = [job.id for job in jobs if job.id not in ran]
    assert {statuses[job_id] for job_id in waiting} == {b"queued"}
    assert connection.lrange(keys.queue_key("default"), 0, -1) == [job_id.encode() for job_id in waiting]
    wip = connection.zrange(keys.started_key("default"), 0, -1)
    assert not wip, [(w, connection.hgetall(b"rq:job:" + w.split(b":")[0])) for w in wip]
    assert claimed_ids(connection) == [] and connection.zcard(keys.started_key("default")) == 0


def test_a_sigkilled_worker_mid_backlog_loses_no_job(connection: Redis, processes: Processes) -> None:
    jobs = enqueue_many(connection, "workertest.note", [("default", ("ran",)) for _ in range(3000)])
    victim = start_worker(processes, name="victim")
    wait_until(lambda: len(recorded(connection, "ran")) >= 300, timeout=30, what="a tenth of the jobs to run")
    kill_group(victim)
    start_worker(processes, name="rescuer")
    wait_until(lambda: len(finished_ids(connection)) == len(jobs), timeout=60, what="every job to finish")
    assert lanes_and_claims_empty(connection)
    assert set(recorded(connection, "ran")) == {job.id for job in jobs}  # a job may run twice, none is lost
