"""Finish: store a successful job's outcome in one round trip, exactly as RQ would store it.

RQ's success path (WATCH the dependents, a MULTI of some fifteen commands,
the result stream, registries, execution clean-up) costs several round trips
and most of a no-op job's time. For a *plain* job (no success callback, no
repeat, no webhook, no RQ rate limit, a result kept for some time) the same
writes are made by one Lua call; anything else takes RQ's own path.
"""

from __future__ import annotations

from base64 import b64encode
from typing import Any

from redis import Redis
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, Execution, ExecutionRegistry
from rq.job import Job
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.utils import current_timestamp, utcformat

from service.core import metrics
from service.core.keys import claimed_key

HISTOGRAM = "job_duration_seconds"
# A larger result fails its job: Redis refuses a value over 512 MB by closing
# the connection, which a worker would take for an outage and retry forever.
RESULT_MAX_BYTES = 16 * 1024 * 1024


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


# The duration buckets as Python names them in the metrics hash ("le=0.005", "le=1.0", ...).
BUCKET_NAMES = [f"{bound}" for bound in metrics.HISTOGRAMS[HISTOGRAM][2]]


def outcome_metrics(counter: str, task: str, lane: str, seconds: float) -> list[Any]:
    """The metric arguments of one execution's outcome for FINISH_SCRIPT, which fills in the buckets.

    Passing the bucket field names per job (a dozen of them) cost more to
    pack and send than the rest of the call; the script builds them from
    BUCKET_NAMES, the same strings metrics.observe() uses.
    """
    prefix = metrics.field(HISTOGRAM, task, lane) + metrics.SEP
    return [metrics.field("jobs_started", task, lane), metrics.field(counter, task, lane), prefix, seconds]


# KEYS: job, started registry, execution, execution registry, worker, worker
#       executions, claimed list, finished registry, results stream, dependents,
#       concurrency slots of the task (or any unused key), metrics hash.
# ARGV: job id, execution composite key, execution id, ended_at (ISO), result
#       ttl (-1 = forever), finished-registry score, working seconds, the number
#       N of result stream arguments, those N field/value arguments, then the
#       metrics: the started and outcome counter fields, the duration histogram's
#       field prefix and the duration in seconds (see outcome_metrics).
# Returns the number of dependents (the caller enqueues them through RQ).
FINISH_SCRIPT = (
    "local BUCKETS = {"
    + ", ".join(f"'{name}'" for name in BUCKET_NAMES)
    + """}
local ttl = tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'status', 'finished', 'ended_at', ARGV[4])
if ttl > 0 then
    redis.call('EXPIRE', KEYS[1], ttl)
    redis.call('EXPIRE', KEYS[10], ttl)
else
    redis.call('PERSIST', KEYS[1])
end
redis.call('ZADD', KEYS[8], ARGV[6], ARGV[1])
local n = tonumber(ARGV[8])
local fields = {}
for i = 9, 8 + n do
    fields[#fields + 1] = ARGV[i]
end
local m = 9 + n
local histogram, seconds = ARGV[m + 2], ARGV[m + 3]
redis.call('HINCRBYFLOAT', KEYS[12], histogram .. 'sum', seconds)
redis.call('HINCRBY', KEYS[12], ARGV[m], 1)
redis.call('HINCRBY', KEYS[12], ARGV[m + 1], 1)
local s = tonumber(seconds)
for _, bound in ipairs(BUCKETS) do
    if s <= tonumber(bound) then
        redis.call('HINCRBY', KEYS[12], histogram .. 'le=' .. bound, 1)
    end
end
redis.call('HINCRBY', KEYS[12], histogram .. 'count', 1)
redis.call('XADD', KEYS[9], 'MAXLEN', '10', '*', unpack(fields))
if ttl > 0 then
    redis.call('EXPIRE', KEYS[9], ttl)
else
    redis.call('PERSIST', KEYS[9])
end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[3])
redis.call('SREM', KEYS[6], ARGV[2])
redis.call('LREM', KEYS[7], 1, ARGV[1])
redis.call('ZREM', KEYS[11], ARGV[1])
redis.call('HINCRBY', KEYS[5], 'successful_job_count', 1)
redis.call('HINCRBYFLOAT', KEYS[5], 'total_working_time', ARGV[7])
return redis.call('SCARD', KEYS[10])
"""
)


def is_plain(job: Job, result_ttl: int) -> bool:
    """True when RQ's success path would do nothing beyond what FINISH_SCRIPT does."""
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
        self._finish = connection.register_script(FINISH_SCRIPT)

    def finish(
        self, job: Job, execution: Execution, result_ttl: int, slot_key: str, task: str, client: Any = None
    ) -> int:
        """Mark `job` finished with its result; return how many dependents it has."""
        assert job.started_at and job.ended_at
        encoded = encode_result(job.serializer, job._result)
        result = Result(
            job_id=job.id,
            type=Result.Type.SUCCESSFUL,
            connection=job.connection,
            worker_name=self.worker_name,
            serializer=job.serializer,
            execution_id=execution.id,
            execution_started_at=execution.created_at,
            execution_ended_at=job.ended_at,
        )
        fields = result.serialize()
        if job._result is not None:  # as Result.serialize() stores it, serialized once
            fields["return_value"] = b64encode(encoded).decode()
        pairs = [str(part) for item in fields.items() for part in item]
        score = "+inf" if result_ttl < 0 else current_timestamp() + result_ttl
        working = (job.ended_at - job.started_at).total_seconds()
        return int(
            self._finish(
                keys=[
                    job.key,
                    StartedJobRegistry.key_template.format(job.origin),
                    execution.key,
                    ExecutionRegistry.key_template.format(job.id),
                    self.worker_key,
                    WORKER_EXECUTIONS_KEY_TEMPLATE.format(self.worker_name),
                    claimed_key(self.worker_name),
                    FinishedJobRegistry.key_template.format(job.origin),
                    Result.get_key(job.id),
                    job.dependents_key,
                    slot_key,
                    metrics.METRICS_KEY,
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
                + outcome_metrics("jobs_finished", task, job.origin, working),
                client=client,
            )
        )
