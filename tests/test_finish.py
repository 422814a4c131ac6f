"""The work script's finish part on a real Redis: what a plain job's success leaves behind, as RQ's own path would."""

from __future__ import annotations

import time
from datetime import timedelta
from hashlib import sha256

import pytest
from redis import Redis
from rq.executions import Execution
from rq.results import Result
from rq.utils import now

import service.tasks.diag  # noqa: F401 - registers diag.*
from service.core import keys, metrics
from service.jobs.enqueue import InternalRequest, enqueue
from service.jobs.model import ServiceJob
from service.workers import limits
from service.workers.claim import NOT_CLAIMED, Claim, Claimer
from service.workers.finish import Finisher

WORKER = "w1"


def started(connection: Redis, result_ttl: int = 500) -> tuple[ServiceJob, Execution]:
    """A diag.echo job claimed and started by worker w1, run for 20 ms, returning {"ok": 1}."""
    job_id = enqueue(connection, InternalRequest(task="diag.echo", result_ttl=result_ttl)).id
    claim = Claimer(connection, WORKER).claim(["default"], 100)
    assert isinstance(claim, Claim) and claim.job_id == job_id and claim.execution_id
    job = ServiceJob(job_id, connection=connection)
    job.restore(claim.raw)
    job.started_at = now()
    job.ended_at = job.started_at + timedelta(milliseconds=20)
    job._result = {"ok": 1}
    return job, Execution(claim.execution_id, job_id, connection, worker_name=WORKER)


def finish(connection: Redis, job: ServiceJob, execution: Execution, result_ttl: int = 500) -> int:
    slot = keys.limit_running_key("diag.echo")
    connection.zadd(slot, {job.id: time.time() + 60})
    slots = (slot, limits.NO_SLOT, "")
    finisher = Finisher(connection, WORKER, keys.worker_key(WORKER))
    dependents, claimed = finisher.finish(job, finisher.outcome(job, execution, result_ttl, slots, "diag.echo"))
    (dependents,) = dependents
    assert claimed == NOT_CLAIMED  # no lanes given: a finish alone, its counts added with it
    return dependents


def test_the_job_is_finished_in_its_registry_with_its_result(connection: Redis) -> None:
    job, execution = started(connection)
    assert finish(connection, job, execution) == 0
    stored = connection.hgetall(job.key)
    assert stored[b"status"] == b"finished" and stored[b"ended_at"].endswith(b"Z")
    assert 490 < connection.ttl(job.key) <= 500
    assert connection.zscore(keys.finished_key("default"), job.id) == pytest.approx(time.time() + 500, abs=5)
    result = Result.fetch_latest(ServiceJob.fetch(job.id, connection=connection), serializer=job.serializer)
    assert result is not None and result.type == Result.Type.SUCCESSFUL and result.return_value == {"ok": 1}
    assert stored[b"worker_name"] == WORKER.encode() and stored[b"started_at"] <= stored[b"ended_at"]
    assert 490 < connection.ttl(keys.results_key(job.id)) <= 500


def test_a_kept_success_stores_its_value_once_and_nothing_the_job_hash_repeats(connection: Redis) -> None:
    job, execution = started(connection)
    finish(connection, job, execution)
    [(_, entry)] = connection.xrange(keys.results_key(job.id))
    assert set(entry) == {b"type", b"return_value"}  # worker and times are the job hash's; the execution is gone
    stored = connection.hgetall(job.key)
    assert b"last_heartbeat" not in stored and stored[b"ended_at"].endswith(b"Z")


def test_on_the_embedded_server_a_kept_result_takes_no_preallocated_stream_node(connection: Redis) -> None:
    """stream-node-max-bytes 64: the one-entry result stream stays well under the 4 kB node Redis preallocates."""
    job, execution = started(connection)
    finish(connection, job, execution)
    assert connection.config_get("stream-node-max-bytes") == {"stream-node-max-bytes": "64"}
    assert connection.memory_usage(keys.results_key(job.id)) < 2048  # 4,392-4,784 bytes with the default 4096
    assert ServiceJob.fetch(job.id, connection=connection).latest_result().return_value == {"ok": 1}


def test_on_the_embedded_server_a_job_with_larger_arguments_keeps_a_compact_hash(connection: Redis) -> None:
    """hash-max-listpack-value 1024: a job whose data is over 64 bytes stays a listpack (a hash table: ~1 kB more)."""
    job_id = enqueue(
        connection, InternalRequest(task="diag.echo", args=[sha256(bytes([n])).hexdigest() for n in range(3)])
    ).id
    assert len(connection.hget(keys.job_key(job_id), "data") or b"") > 64
    assert connection.object("encoding", keys.job_key(job_id)) in (b"listpack", b"ziplist")  # Redis 6.2: ziplist


def test_the_execution_and_the_claim_are_gone(connection: Redis) -> None:
    job, execution = started(connection)
    finish(connection, job, execution)
    assert not connection.exists(execution.key)
    assert connection.zcard(keys.started_key("default")) == 0
    assert connection.zcard(keys.executions_key(job.id)) == 0
    assert connection.scard(keys.worker_executions_key(WORKER)) == 0
    assert connection.llen(keys.claimed_key(WORKER)) == 0
    assert connection.zcard(keys.limit_running_key("diag.echo")) == 0


def test_the_worker_and_the_metrics_count_it(connection: Redis) -> None:
    job, execution = started(connection)
    finish(connection, job, execution)
    worker = connection.hgetall(keys.worker_key(WORKER))
    assert worker[b"successful_job_count"] == b"1" and float(worker[b"total_working_time"]) == pytest.approx(0.02)
    counted = {k.decode(): float(v) for k, v in connection.hgetall(keys.METRICS_KEY).items()}
    labels = ("diag.echo", "default")
    assert counted[metrics.field("jobs_started", *labels)] == 1
    assert counted[metrics.field("jobs_finished", *labels)] == 1
    histogram = metrics.field("job_duration_seconds", *labels)
    assert counted[f"{histogram}|sum"] == pytest.approx(0.02)
    assert {k for k in counted if k.startswith(f"{histogram}|in=")} == {f"{histogram}|in=0.025"}  # its one bucket


def test_a_result_kept_forever_has_no_ttl_and_an_infinite_score(connection: Redis) -> None:
    job, execution = started(connection, result_ttl=-1)
    finish(connection, job, execution, result_ttl=-1)
    assert connection.ttl(job.key) == -1 and connection.ttl(keys.results_key(job.id)) == -1
    assert connection.zscore(keys.finished_key("default"), job.id) == float("inf")


def test_it_returns_how_many_dependents_wait_and_expires_their_set(connection: Redis) -> None:
    job, execution = started(connection)
    child = enqueue(connection, InternalRequest(task="diag.echo", depends_on=[job.id]))
    assert connection.hget(child.key, "status") == b"deferred"
    assert finish(connection, job, execution) == 1
    assert 490 < connection.ttl(job.dependents_key) <= 500
