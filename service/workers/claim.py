"""Dequeue: take jobs from the lanes without a loss window, in strict or weighted priority order.

Stock RQ dequeues from several queues with BLPOP: a worker killed between the
pop and the start loses the job for good. Here every job is taken with one
atomic Lua call that moves its id from the lane into the worker's own
in-progress list (keys.claimed_key), so at every instant the id is in a
lane, in a claimed list or has an outcome. An idle worker blocks on a
per-lane *doorbell* list (a wake-up hint that ServiceQueue.push_job_id rings
with every push), never on the lane itself, so blocking cannot lose a job.

Fair share within a lane (SPEC 11): jobs with a `group` are also indexed
per group, and the lane's groups take turns (keys.groups_key); the lane
list still holds every waiting job, as RQ's tools count them. See
service/core/lua/claim.lua for the turns and docs/workers.md for the cost.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from redis import Redis
from rq.utils import utcformat

from service.core import clock, keys, metrics
from service.core.keys import CLAIMERS_KEY, claimed_key, doorbell_key
from service.core.lua import script
from service.jobs.damage import GROUP_FIELD

CLAIM = script("claim")
WAIT = "job_wait_seconds"  # the claim script counts each started job's enqueue-to-start wait in it
REQUEUE = script("requeue")
# The claim script's arguments that never change: the job, execution and executions-registry prefixes
# (it builds those keys from a claimed id) and the fair-share names (service.core.keys). Passed as bytes:
# redis-py then sends them without encoding each call.
CLAIM_PREFIXES = tuple(
    part.encode()
    for part in (
        keys.JOB_PREFIX, keys.EXECUTION_PREFIX, keys.EXECUTIONS_PREFIX,
        keys.LANE_HEAD, keys.GROUP_SUFFIX.format(group=""), GROUP_FIELD, keys.UNGROUPED,
        " ".join(str(bound) for bound in metrics.HISTOGRAMS[WAIT][2]),
    )
)  # fmt: skip


def raw_id(job_id: str) -> bytes:
    """`job_id` as the bytes Redis holds (an id read from Redis keeps bytes that are not UTF-8 as surrogates)."""
    return job_id.encode("utf-8", "surrogateescape")


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
    """Claims jobs for one worker and puts them back (the claim and requeue scripts)."""

    def __init__(self, connection: Redis, worker_name: str) -> None:
        self.connection = connection
        self.worker_name = worker_name
        self.key = claimed_key(worker_name)
        self._name = worker_name.encode()
        self._worker_keys = [self.key, CLAIMERS_KEY, keys.worker_key(worker_name)]
        self._worker_keys += [keys.worker_executions_key(worker_name), keys.METRICS_KEY]
        self._lane_keys: dict[tuple[str, ...], list[bytes]] = {}
        self._lane_args: dict[tuple[str, ...], list[bytes]] = {}

    def claim(self, lanes: Sequence[str], ttl_seconds: int) -> Claim | float | None:
        """Claim and start the head of the first non-empty lane; else the earliest waiting time (or None).

        Times are Redis's: the script reads TIME and answers it, and the
        process's clock (service.core.clock) learns its offset from it.
        """
        sent_at = time.time()
        execution_id = uuid.uuid4().hex
        reply = CLAIM(
            keys=self._keys(tuple(lanes)),
            args=[
                self._name,
                execution_id,
                utcformat(clock.utcnow()),
                ttl_seconds,
                *CLAIM_PREFIXES,
                *self._args(lanes),
            ],
            client=self.connection,
        )
        clock.learn(float(reply[-1]), sent_at)
        if reply[0] is None:  # nothing claimed (an empty id is still a claim)
            earliest = float(reply[1])
            return earliest if earliest >= 0 else None
        flat = reply[2]
        raw = dict(zip(flat[::2], flat[1::2], strict=True))
        # An id that is not UTF-8 keeps its bytes as surrogates: it is discarded, not a reason to stop.
        job_id = reply[0].decode("utf-8", "surrogateescape")
        return Claim(job_id, lanes[reply[1] - 1], raw, execution_id if reply[3] else None)

    def _keys(self, lanes: tuple[str, ...]) -> list[bytes]:
        """The claim script's KEYS for trying `lanes` in this order (worked out and encoded once per order)."""
        found = self._lane_keys.get(lanes)
        if found is None:
            lane_keys = [
                key
                for lane in lanes
                for key in (
                    keys.queue_key(lane),
                    keys.waiting_key(lane),
                    doorbell_key(lane),
                    keys.started_key(lane),
                    keys.groups_key(lane),
                    keys.held_groups_key(lane),
                )  # fmt: skip
            ]
            found = self._lane_keys[lanes] = [key.encode() for key in self._worker_keys + lane_keys]
        return found

    def _args(self, lanes: Sequence[str]) -> list[bytes]:
        """The claim script's per-lane arguments: each lane's wait histogram field prefix (encoded once per order)."""
        order = tuple(lanes)
        found = self._lane_args.get(order)
        if found is None:
            found = self._lane_args[order] = [(metrics.field(WAIT, lane) + metrics.SEP).encode() for lane in order]
        return found

    def wait(self, lanes: Sequence[str], timeout_seconds: float) -> None:
        """Block until a lane's doorbell rings or the timeout passes (the token only wakes us)."""
        self.connection.blpop([doorbell_key(lane) for lane in lanes], timeout=max(0.01, timeout_seconds))

    def requeue(self, job_id: str, lane: str, key: str | None = None) -> None:
        """Move `job_id` from a claimed list (ours by default) back to the front of `lane`."""
        REQUEUE(
            keys=[key or self.key, keys.queue_key(lane), doorbell_key(lane), keys.job_key(job_id)],
            args=[job_id],
            client=self.connection,
        )

    def drop(self, job_id: str) -> None:
        """Forget a claimed id whose job no longer exists or must not run."""
        self.connection.lrem(self.key, 1, raw_id(job_id))

    def claimed(self, key: str | None = None) -> list[str]:
        return [i.decode("utf-8", "surrogateescape") for i in self.connection.lrange(key or self.key, 0, -1)]
