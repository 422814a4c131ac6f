"""Finish: store a successful job's outcome in one round trip, exactly as RQ would store it.

RQ's success path (WATCH the dependents, a MULTI of some fifteen commands,
the result stream, registries, execution clean-up) costs several round trips
and most of a no-op job's time. For a *plain* job (no success callback, no
repeat, no webhook, no RQ rate limit, a result kept for some time) the same
writes are made by the finish part of the worker's work script call
(service/core/lua/work.lua), which also claims its next job; anything else takes RQ's own path. It
stores fewer bytes than RQ for the job's result_ttl (docs/redis.md): the
result entry holds its type and return value (RESULT_FIELDS), and the job
hash drops `last_heartbeat`, which would repeat `ended_at`.
"""

from __future__ import annotations

from base64 import b64encode
from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.exceptions import ResponseError
from rq.executions import Execution
from rq.job import Job
from rq.results import Result
from rq.utils import utcformat

from service.core import clock, keys
from service.jobs import batches
from service.workers.claim import Claim, Claimer
from service.workers.limits import NO_SLOT
from service.workers.tally import Tally

HISTOGRAM = "job_duration_seconds"
# A larger result fails its job: Redis refuses a value over 512 MB by closing
# the connection, which a worker would take for an outage and retry forever.
RESULT_MAX_BYTES = 16 * 1024 * 1024
# The result stream entry of a success keeps what RQ's readers (latest_result(), rq-dashboard, GET /jobs/<id>) show:
# its worker and times would repeat the job hash's, its execution id name the execution deleted in the same call.
RESULT_FIELDS = ("type", "return_value")


class ResultRefused(Exception):
    """Raised when a task's result cannot be stored (not JSON, or over RESULT_MAX_BYTES); its job fails with it."""


def encode_result(serializer: Any, value: Any) -> bytes:
    """The stored form of a task's result; ResultRefused when it is not JSON or too large."""
    try:
        encoded = bytes(serializer.dumps(value))
    except Exception as exc:  # RQ would store "Unserializable return value" and call the job finished
        raise ResultRefused(f"the task returned a value that is not JSON ({type(exc).__name__}: {exc})"[:300]) from None
    if len(encoded) > RESULT_MAX_BYTES:
        raise ResultRefused(f"the task's result is {len(encoded)} bytes of JSON; at most {RESULT_MAX_BYTES} are stored")
    return encoded


def is_plain(job: Job, result_ttl: int) -> bool:
    """True when RQ's success path would do nothing beyond what the work script's finish does."""
    return (
        result_ttl != 0
        and not job._success_callback_name
        and not job.repeats_left
        and not job.webhooks
        and not job.has_rate_limit
    )


class Finisher:
    """Stores successful outcomes for one worker, through its Claimer's calls (the finish part of the
    work script, with the next claim when lanes are given)."""

    def __init__(self, connection: Redis, worker_name: str, worker_key: str, claimer: Claimer | None = None) -> None:
        self.worker_name = worker_name
        self.worker_key = worker_key
        self.connection = connection
        self.claimer = claimer or Claimer(connection, worker_name)
        self._counted = ""  # the execution whose counts the tally holds: a retried store counts it once

    def outcome(
        self,
        job: Job,
        execution: Execution,
        result_ttl: int,
        slots: tuple[str, str, str],
        task: str,
        recorded: bool = True,
        start: tuple[str, int] | None = None,
    ) -> tuple[list[Any], list[Any]]:
        """`job`'s success as the work script stores it (its keys and arguments); its counts are kept by the
        worker (service.workers.tally) until a call adds them.

        `slots`: the task's slot key, its group slot key (limits.NO_SLOT for none) and the job's group ('').
        `recorded`: the execution's records were written (by the heartbeat): they are removed too.
        `start`: a prefetched job's started_at and attempts, stored with its outcome (it was never marked started).
        """
        assert job.started_at and job.ended_at
        encoded = encode_result(job.serializer, job._result)
        result = Result(
            job_id=job.id, type=Result.Type.SUCCESSFUL, connection=job.connection, serializer=job.serializer
        )
        fields = {name: value for name, value in result.serialize().items() if name in RESULT_FIELDS}
        if job._result is not None:  # as Result.serialize() stores it, serialized once
            fields["return_value"] = b64encode(encoded).decode()
        pairs = [str(part) for item in fields.items() for part in item]
        score = "+inf" if result_ttl < 0 else clock.timestamp() + result_ttl
        working = (job.ended_at - job.started_at).total_seconds()
        part = (
            [
                job.key,
                keys.started_key(job.origin),
                execution.key,
                keys.executions_key(job.id),
                keys.finished_key(job.origin),
                keys.results_key(job.id),
                job.dependents_key,
                slots[0],
                job.dependencies_key,
                slots[1],
                keys.held_groups_key(job.origin),
                keys.ended_channel(job.id),
            ],
            [
                job.id,
                execution.composite_key,
                execution.id,
                utcformat(job.ended_at),
                result_ttl,
                score,
                slots[2],
                "1" if job._dependency_ids else "",
                "" if slots[0] == NO_SLOT else "1",
                "1" if recorded else "",
                start[0] if start else "",
                start[1] if start else "",
                *pairs,
            ],
        )
        if self._counted != execution.id:
            self._counted = execution.id
            self._count(self.claimer.tally, task, job.origin, working)
        return part

    def finish(
        self,
        job: Job,
        part: tuple[list[Any], list[Any]],
        lanes: Sequence[str] = (),
        ttl_seconds: int = 0,
        pending: Sequence[tuple[list[Any], list[Any]]] = (),
        prefetch: int = 0,
    ) -> tuple[list[int], Claim | float | None | bytes | ResponseError]:
        """Store the outcomes `pending`, then `job`'s success `part` (both as `outcome` gives them), then claim
        from `lanes` (if any, prefetching up to `prefetch` more) in the same call; return each outcome's
        dependents (`job`'s last) and what was claimed (claim.NOT_CLAIMED without lanes)."""
        batch_id = getattr(job, "batch_id", None)
        if not batch_id:
            return self.claimer.call(lanes, ttl_seconds, finish=[*pending, part], prefetch=prefetch)
        with self.connection.pipeline() as pipe:  # MULTI: the outcome and its count in its batch, at once
            self.claimer.call(finish=[*pending, part], client=pipe)
            try:
                batches.end(pipe, job.id, batch_id, "finished")
                reply = pipe.execute()[0]
            except BaseException:
                self.claimer.abandon()
                raise
            return self.claimer.done(reply)

    @staticmethod
    def _count(tally: Tally, task: str, lane: str, working: float) -> None:
        """A success's counts: two counters, the duration's bucket and sum, the worker's two fields."""
        tally.count("jobs_started", task, lane)
        tally.count("jobs_finished", task, lane)
        tally.observe(HISTOGRAM, working, task, lane)
        tally.worker("successful_job_count", 1)
        tally.worker("total_working_time", working)
