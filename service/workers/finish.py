"""Finish: store a successful job's outcome in one round trip, exactly as RQ would store it.

RQ's success path (WATCH the dependents, a MULTI of some fifteen commands,
the result stream, registries, execution clean-up) costs several round trips
and most of a no-op job's time. For a *plain* job (no success callback, no
repeat, no webhook, no RQ rate limit, a result kept for some time) the same
writes are made by one Lua call; anything else takes RQ's own path. It
stores fewer bytes than RQ for the job's result_ttl (docs/redis.md): the
result entry holds its type and return value (RESULT_FIELDS), and the job
hash drops `last_heartbeat`, which would repeat `ended_at`.
"""

from __future__ import annotations

from base64 import b64encode
from typing import Any

from redis import Redis
from rq.executions import Execution
from rq.job import Job
from rq.results import Result
from rq.utils import utcformat

from service.core import clock, keys, metrics
from service.core.lua import script
from service.jobs import batches
from service.workers.limits import NO_SLOT

FINISH = script("finish")
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


def outcome_metrics(counter: str, task: str, lane: str, seconds: float) -> list[Any]:
    """The metric fields of one execution's outcome for the finish script: two counters, a bucket and a sum."""
    bucket = metrics.bucket_of(seconds, metrics.HISTOGRAMS[HISTOGRAM][2])
    return [
        metrics.field("jobs_started", task, lane),
        metrics.field(counter, task, lane),
        metrics.field(HISTOGRAM, task, lane, bucket),
        metrics.field(HISTOGRAM, task, lane, "sum"),
        seconds,
    ]


def is_plain(job: Job, result_ttl: int) -> bool:
    """True when RQ's success path would do nothing beyond what the finish script does."""
    return (
        result_ttl != 0
        and not job._success_callback_name
        and not job.repeats_left
        and not job.webhooks
        and not job.has_rate_limit
    )


class Finisher:
    """Stores successful outcomes for one worker."""

    def __init__(self, connection: Redis, worker_name: str, worker_key: str) -> None:
        self.worker_name = worker_name
        self.worker_key = worker_key
        self.connection = connection

    def finish(self, job: Job, execution: Execution, result_ttl: int, slots: tuple[str, str, str], task: str) -> int:
        """Mark `job` finished with its result; return how many dependents it has.

        `slots`: the task's slot key, its group slot key (limits.NO_SLOT for none) and the job's group ('').
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
        call = dict(
            keys=[
                job.key,
                keys.started_key(job.origin),
                execution.key,
                keys.executions_key(job.id),
                self.worker_key,
                keys.worker_executions_key(self.worker_name),
                keys.claimed_key(self.worker_name),
                keys.finished_key(job.origin),
                keys.results_key(job.id),
                job.dependents_key,
                slots[0],
                keys.METRICS_KEY,
                job.dependencies_key,
                slots[1],
                keys.held_groups_key(job.origin),
                keys.ended_channel(job.id),
            ],
            args=[
                job.id,
                execution.composite_key,
                execution.id,
                utcformat(job.ended_at),
                result_ttl,
                score,
                working,
            ]
            + [len(pairs), *pairs]
            + outcome_metrics("jobs_finished", task, job.origin, working)
            + [slots[2], "1" if job._dependency_ids else "", "" if slots[0] == NO_SLOT else "1"],
        )
        batch_id = getattr(job, "batch_id", None)
        if not batch_id:
            return int(FINISH(**call, client=self.connection))
        with self.connection.pipeline() as pipe:  # MULTI: the outcome and its count in its batch, at once
            FINISH(**call, client=pipe)
            batches.end(pipe, job.id, batch_id, "finished")
            return int(pipe.execute()[0])
