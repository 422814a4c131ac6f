"""Dequeue: take jobs from the lanes without a loss window, in strict or weighted priority order.

Stock RQ dequeues from several queues with BLPOP: a worker killed between the
pop and the start loses the job for good. Here every job is taken with one
atomic Lua call that moves its id from the lane into the worker's own
in-progress list (`svc:claimed:<worker>`), so at every instant the id is in a
lane, in a claimed list or has an outcome. An idle worker blocks on a
per-lane *doorbell* list (a wake-up hint that ServiceQueue.push_job_id rings
with every push), never on the lane itself, so blocking cannot lose a job.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE
from rq.utils import utcformat

from service.core.keys import CLAIMERS_KEY, claimed_key, doorbell_key

WORKER_KEY = "rq:worker:{worker}"
QUEUE_PREFIX = "rq:queue:"
JOB_PREFIX = "rq:job:"

# KEYS: claimed list, claimers set, worker hash, worker executions set.
# ARGV: now (epoch s), worker name, execution id, now (ISO), execution ttl (s),
#       then the lane names in the order to try.
# 1. Waiting (limited) jobs whose time has come, up to 100 a lane, go back to
#    the front of their lane.
# 2. The first non-empty lane's head moves into the claimed list (LMOVE: atomic,
#    so the id is never only in this script's hands); its doorbell token is
#    consumed. Empty lanes' doorbells are cleared: their tokens are stale.
# 3. A queued job is marked started in the same call, exactly as RQ's
#    prepare_execution + prepare_job_execution would (status, started_at,
#    worker_name, attempts, execution hash and registries, started registry,
#    worker state): claim and start cost one round trip.
# Returns {id, lane, job hash, started 0/1} or {false, earliest waiting time or -1}.
CLAIM_SCRIPT = """
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[5])
local earliest = -1
for i = 6, #ARGV do
    local lane = ARGV[i]
    local waiting = 'svc:waiting:' .. lane
    local due = redis.call('ZRANGEBYSCORE', waiting, '-inf', now, 'LIMIT', 0, 100)
    for _, id in ipairs(due) do
        redis.call('ZREM', waiting, id)
        redis.call('LPUSH', 'rq:queue:' .. lane, id)
    end
    local next_due = redis.call('ZRANGE', waiting, 0, 0, 'WITHSCORES')
    if next_due[2] and (earliest < 0 or tonumber(next_due[2]) < earliest) then
        earliest = tonumber(next_due[2])
    end
end
for i = 6, #ARGV do
    local lane = ARGV[i]
    local id = redis.call('LMOVE', 'rq:queue:' .. lane, KEYS[1], 'LEFT', 'RIGHT')
    if id then
        redis.call('SADD', KEYS[2], ARGV[2])
        redis.call('LPOP', 'svc:doorbell:' .. lane)
        local job_key = 'rq:job:' .. id
        local started = 0
        if redis.call('HGET', job_key, 'status') == 'queued' then
            started = 1
            local composite = id .. ':' .. ARGV[3]
            redis.call('HSET', job_key, 'status', 'started', 'started_at', ARGV[4], 'worker_name', ARGV[2],
                       'last_heartbeat', ARGV[4])
            redis.call('HINCRBY', job_key, 'attempts', 1)
            redis.call('PERSIST', job_key)
            local exec_key = 'rq:execution:' .. composite
            redis.call('HSET', exec_key, 'id', ARGV[3], 'job_id', id, 'created_at', ARGV[1],
                       'last_heartbeat', ARGV[1], 'worker_name', ARGV[2])
            redis.call('EXPIRE', exec_key, ttl)
            redis.call('ZADD', 'rq:executions:' .. id, now + ttl + 60, ARGV[3])
            redis.call('EXPIRE', 'rq:executions:' .. id, ttl + 60)
            redis.call('ZADD', 'rq:wip:' .. lane, now + ttl, composite)
            redis.call('SADD', KEYS[4], composite)
            redis.call('EXPIRE', KEYS[4], ttl + 60)
            redis.call('HSET', KEYS[3], 'state', 'busy')
        end
        return {id, lane, redis.call('HGETALL', job_key), started}
    end
    redis.call('DEL', 'svc:doorbell:' .. lane)
end
return {false, tostring(earliest)}
"""

# KEYS: claimed list, lane list, doorbell, job hash. ARGV: job id.
# Put a claimed job back at the front of its lane, queued, and wake a worker.
REQUEUE_SCRIPT = """
redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], 1)
if redis.call('EXISTS', KEYS[4]) == 1 then
    redis.call('HSET', KEYS[4], 'status', 'queued')
end
return 1
"""


def raw_id(job_id: str) -> bytes:
    """`job_id` as the bytes Redis holds (an id read from Redis keeps bytes that are not UTF-8 as surrogates)."""
    return job_id.encode("utf-8", "surrogateescape")


def now_utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def parse_weights(text: str, lanes: Sequence[str]) -> dict[str, int]:
    """Parse 'high=6,default=3,low=1' into weights for `lanes`; ValueError names a bad entry."""
    weights = {lane: 1 for lane in lanes}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in weights or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"{item!r}: expected <lane>=<whole number >= 1> for one of {', '.join(lanes)}")
        weights[name.strip()] = int(value)
    return weights


class LaneOrder:
    """The order to try the lanes in for each claim: strict priority, or smooth weighted round-robin.

    Weighted: each claim prefers the lane picked by nginx's smooth weighted
    round-robin (6:3:1 gives high, default, high, low, ...), then falls back
    to the others in priority order, so an empty preferred lane costs nothing
    and a flood of `high` still leaves `low` one claim in ten.
    """

    def __init__(self, lanes: Sequence[str], weights: dict[str, int] | None = None) -> None:
        self.lanes = list(lanes)
        self.weights = weights
        self._current = {lane: 0 for lane in self.lanes}

    def next(self) -> list[str]:
        if not self.weights or len(self.lanes) == 1:
            return self.lanes
        total = 0
        for lane in self.lanes:
            self._current[lane] += self.weights[lane]
            total += self.weights[lane]
        preferred = max(self.lanes, key=lambda lane: self._current[lane])
        self._current[preferred] -= total
        return [preferred, *(lane for lane in self.lanes if lane != preferred)]


@dataclass
class Claim:
    """A job id taken from `lane` into a claimed list, with its job hash (empty if it vanished).

    `execution_id` is set when the claim also started the job (it was queued).
    """

    job_id: str
    lane: str
    raw: dict[bytes, bytes]
    execution_id: str | None = None


class Claimer:
    """Claims jobs for one worker and puts them back; owns the claim and requeue scripts."""

    def __init__(self, connection: Redis, worker_name: str) -> None:
        self.connection = connection
        self.worker_name = worker_name
        self.key = claimed_key(worker_name)
        self.worker_key = WORKER_KEY.format(worker=worker_name)
        self.executions_key = WORKER_EXECUTIONS_KEY_TEMPLATE.format(worker_name)
        self._claim = connection.register_script(CLAIM_SCRIPT)
        self._requeue = connection.register_script(REQUEUE_SCRIPT)

    def claim(self, lanes: Sequence[str], ttl_seconds: int) -> Claim | float | None:
        """Claim and start the head of the first non-empty lane; else the earliest waiting time (or None)."""
        now = time.time()
        execution_id = uuid.uuid4().hex
        reply = self._claim(
            keys=[self.key, CLAIMERS_KEY, self.worker_key, self.executions_key],
            args=[now, self.worker_name, execution_id, utcformat(now_utc(now)), ttl_seconds, *lanes],
        )
        if reply[0] is None:  # nothing claimed (an empty id is still a claim)
            earliest = float(reply[1])
            return earliest if earliest >= 0 else None
        flat = reply[2]
        raw = dict(zip(flat[::2], flat[1::2], strict=True))
        # An id that is not UTF-8 keeps its bytes as surrogates: it is discarded, not a reason to stop.
        job_id = reply[0].decode("utf-8", "surrogateescape")
        return Claim(job_id, reply[1].decode(), raw, execution_id if reply[3] else None)

    def wait(self, lanes: Sequence[str], timeout_seconds: float) -> None:
        """Block until a lane's doorbell rings or the timeout passes (the token only wakes us)."""
        self.connection.blpop([doorbell_key(lane) for lane in lanes], timeout=max(0.01, timeout_seconds))

    def requeue(self, job_id: str, lane: str, key: str | None = None, client: Any = None) -> None:
        """Move `job_id` from a claimed list (ours by default) back to the front of `lane`."""
        self._requeue(
            keys=[key or self.key, QUEUE_PREFIX + lane, doorbell_key(lane), JOB_PREFIX + job_id],
            args=[job_id],
            client=client,
        )

    def drop(self, job_id: str) -> None:
        """Forget a claimed id whose job no longer exists or must not run."""
        self.connection.lrem(self.key, 1, raw_id(job_id))

    def claimed(self, key: str | None = None) -> list[str]:
        return [i.decode("utf-8", "surrogateescape") for i in self.connection.lrange(key or self.key, 0, -1)]
