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
service/core/lua/work.lua for the turns and docs/workers.md for the cost.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import ResponseError
from rq.utils import utcformat

from service.core import clock, keys
from service.core.keys import CLAIMERS_KEY, claimed_key, doorbell_key
from service.core.lua import script
from service.jobs.damage import BATCH_FIELD, GROUP_FIELD
from service.workers.tally import Tally

# One script for a worker's every call: finish a job, add the kept counters, claim and start the next job.
WORK = script(
    "work",
    JOB_PREFIX=keys.JOB_PREFIX,
    LANE_HEAD=keys.LANE_HEAD,
    GROUP_SEPARATOR=keys.GROUP_SUFFIX.format(group=""),
    GROUP_FIELD=GROUP_FIELD,
    UNGROUPED=keys.UNGROUPED,
    BATCH_FIELD=BATCH_FIELD,
)
WAIT = "job_wait_seconds"  # each started job's enqueue-to-start wait, by lane
REQUEUE = script("requeue")
# While jobs keep coming, held-back jobs are looked for at most this often (Redis's time); a claim that
# finds the lanes empty always looks. A due held-back job waits at most this long (plus the running job).
WAITING_CHECK_SECONDS = 0.1
NOT_CLAIMED = b""  # a call that claimed nothing: no lanes were given
# The Redis type each lane key (in Claimer._keys order) and each of the worker's keys must have ('none' is fine).
LANE_TYPES = (b"list", b"zset", b"list", b"zset", b"list", b"hash")
WORKER_TYPES = (b"list", b"set", b"hash", b"set", b"hash")


def epoch(stamp: bytes | None) -> float | None:
    """Epoch seconds of an ISO 8601 time as RQ writes it (UTC), or None for a missing or bad stamp."""
    try:
        parsed = datetime.fromisoformat(stamp.decode()) if stamp else None
    except (ValueError, UnicodeDecodeError):
        return None
    if parsed is None:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def as_dict(flat: list[bytes]) -> dict[bytes, bytes]:
    """A hash's fields as HGETALL answers them in a script (a flat list; a later field wins)."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


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
    round-robin (6:3:1 gives high, default, high, high, default, high, low,
    ...), then falls back to the others in priority order, so an empty
    preferred lane costs nothing and a flood of `high` still leaves `low` one
    claim in ten. A claim that also prefetches n jobs is charged as n + 1
    turns of its preferred lane (`charge`), and jobs given back unrun are
    refunded: each lane's share of the jobs stays within a batch of its
    weight's, and batches of equal size repeat a cycle holding each lane its
    weight's count of them (6:3:1: h d h l h d h h d h).
    """

    def __init__(self, lanes: Sequence[str], weights: dict[str, int] | None = None) -> None:
        self.lanes = list(lanes)
        self.weights = weights if weights and len(self.lanes) > 1 else None
        self.preferred = self.lanes[0] if self.lanes else ""  # the lane the last turn preferred
        self._current = {lane: 0 for lane in self.lanes}
        self._total = sum(self.weights[lane] for lane in self.lanes) if self.weights else 0
        self._lock = threading.Lock()  # the prefetch watchdog refunds jobs it gives back

    def next(self) -> list[str]:
        if not self.weights:
            return self.lanes
        with self._lock:
            for lane in self.lanes:
                self._current[lane] += self.weights[lane]
            preferred = self.preferred = max(self.lanes, key=lambda lane: self._current[lane])
            self._current[preferred] -= self._total
        return [preferred, *(lane for lane in self.lanes if lane != preferred)]

    def charge(self, lane: str, turns: int) -> None:
        """`turns` more turns of `lane` (negative: jobs claimed in its turns that go back unrun)."""
        if not self.weights or lane not in self._current:
            return
        with self._lock:
            for other in self.lanes:
                self._current[other] += self.weights[other] * turns
            self._current[lane] -= self._total * turns


@dataclass
class Claim:
    """A job id taken from `lane` into a claimed list, with its job hash (empty if it vanished).

    `execution_id` is set when the claim also started the job (it was queued), at Redis's time `at`.
    `more`: the jobs prefetched from the same lane with it, claimed but not started (`prefetched`).
    """

    job_id: str
    lane: str
    raw: dict[bytes, bytes]
    execution_id: str | None = None
    at: float = 0.0
    prefetched: bool = False
    more: list[Claim] = field(default_factory=list)
    turn: str = ""  # a prefetched claim in a weighted order: the lane whose turns it was charged to


class Claimer:
    """Makes one worker's script calls (service/core/lua/work.lua): claims, finishes, its kept counters
    (service.workers.tally); and puts claimed jobs back (the requeue script)."""

    def __init__(self, connection: Redis, worker_name: str) -> None:
        self.connection = connection
        self.worker_name = worker_name
        self.key = claimed_key(worker_name)
        self.tally = Tally(keys.worker_key(worker_name))
        self.state = ""  # the worker hash's state as far as we know ('' unknown): written only when it changes
        self._name = worker_name.encode()
        self._registered = False  # in the claimers set (the heartbeat adds the worker there on every beat too)
        self._next_waiting_check = 0.0  # Redis's time when held-back jobs are next looked for
        self._last_lane = ""  # the lane the last claimed job came from: the lanes before it are probed at once
        worker_keys = [self.key, CLAIMERS_KEY, keys.worker_key(worker_name)]
        worker_keys += [keys.worker_executions_key(worker_name), keys.METRICS_KEY]
        self._worker_keys = [key.encode() for key in worker_keys]
        self._lane_keys: dict[tuple[str, ...], list[bytes]] = {}
        self._pending: tuple[Any, ...] = ()  # a call queued in a pipeline, until its reply is given to `done`

    def claim(self, lanes: Sequence[str], ttl_seconds: int, prefetch: int = 0) -> Claim | float | None:
        """Claim and start the head of the first non-empty lane (and prefetch up to `prefetch` more of its jobs,
        not started); else the earliest waiting time (or None).

        Times are Redis's: the script reads TIME and answers it, and the
        process's clock (service.core.clock) learns its offset from it.
        """
        claimed = self.call(lanes, ttl_seconds, prefetch=prefetch)[1]
        assert claimed is not NOT_CLAIMED
        return claimed

    def flush(self, finish: Sequence[tuple[list[Any], list[Any]]] = ()) -> list[int]:
        """Add the kept counters now (a warm stop), with the outcomes `finish` if any; the worker hash's state
        becomes idle. Returns each outcome's dependents."""
        return self.call(finish=finish)[0]

    def start(
        self,
        claim: Claim,
        ttl_seconds: int,
        finish: Sequence[tuple[list[Any], list[Any]]] = (),
        started_at: str = "",
        execution_id: str = "",
    ) -> tuple[list[int], Claim | float | None | bytes | ResponseError]:
        """Mark the prefetched `claim` started (it runs now: since `started_at`, as `execution_id`, when given),
        storing the outcomes `finish` first; the claim answered has execution_id None if it is not queued."""
        return self.call([claim.lane], ttl_seconds, finish=finish, start=claim.job_id, started_at=started_at,
                         execution_id=execution_id)  # fmt: skip

    def call(
        self,
        lanes: Sequence[str] = (),
        ttl_seconds: int = 0,
        finish: Sequence[tuple[list[Any], list[Any]]] = (),
        client: Any = None,
        prefetch: int = 0,
        start: str = "",
        started_at: str = "",
        execution_id: str = "",
    ) -> tuple[list[int], Claim | float | None | bytes | ResponseError]:
        """One work script call: the outcomes `finish` (each its keys and arguments, from
        service.workers.finish), then a claim from `lanes` if any (prefetching up to `prefetch` more jobs of
        its lane; or with `start`, the start of that prefetched job of lanes[0] instead); return each
        outcome's dependents and what was claimed (as `claim` returns it, NOT_CLAIMED without lanes).
        The kept counters go with it.

        With `client` a pipeline (MULTI), the call is queued there and the caller must pass the
        script's reply to `done` once the pipeline has run, or call `abandon` if it failed (the tally's
        lock is held until then).
        """
        sent_at = time.time()
        execution_id = execution_id or uuid.uuid4().hex
        check = bool(lanes) and not start and clock.now() >= self._next_waiting_check
        self.tally.lock.acquire()
        try:
            finish_keys = [key for part in finish for key in part[0]]
            finish_args = [arg for part in finish for arg in (len(part[1]), *part[1])]
            args = [
                self._name,
                self.state,
                self.tally.encoded(),
                b"1" if self.tally.due() else b"",
                b"1" if lanes and not self._registered else b"",
                len(finish),
                len(finish_args),
                *finish_args,
            ]
            if lanes:
                hint = lanes.index(self._last_lane) + 1 if self._last_lane in lanes else 1
                now = started_at or utcformat(clock.utcnow())
                args += [execution_id, now, ttl_seconds, b"1" if check else b"", hint, prefetch, start]
            call_keys = self._worker_keys + finish_keys + (self._keys(tuple(lanes)) if lanes else [])
            reply = WORK(keys=call_keys, args=args, client=client or self.connection)
        except BaseException:
            self.tally.lock.release()
            raise
        if client is None:
            try:
                return self._done(reply, tuple(lanes), execution_id, sent_at, check)
            finally:
                self.tally.lock.release()
        self._pending = (tuple(lanes), execution_id, sent_at, check)
        return [], NOT_CLAIMED

    def done(self, reply: Any) -> tuple[list[int], Claim | float | None | bytes | ResponseError]:
        """The reply of a call queued in a pipeline (see `call`)."""
        try:
            return self._done(reply, *self._pending)
        finally:
            self.tally.lock.release()

    def abandon(self) -> None:
        """A call queued in a pipeline did not run: its counters stay kept."""
        self.tally.lock.release()

    def observe_wait(self, raw: dict[bytes, bytes], lane: str, started: float) -> None:
        """A started job's enqueue-to-start wait (`started`: Redis's time), kept in the tally."""
        enqueued = epoch(raw.get(b"enqueued_at"))
        if enqueued is not None:
            self.tally.observe(WAIT, max(0.0, started - enqueued), lane)

    def _done(
        self, reply: Any, lanes: tuple[str, ...], execution_id: str, sent_at: float, check: bool
    ) -> tuple[list[int], Claim | float | None | bytes | ResponseError]:
        dependents, flushed, claimed = [int(n) for n in reply[0]], reply[1], reply[2]
        if flushed:
            self.tally.clear()
        if not lanes:
            self.state = "idle"
            return dependents, NOT_CLAIMED
        if claimed[0] is None and claimed[1] == b"error":  # the claim after a finish failed (see work.lua)
            self.state = ""  # not known now: written by the next call
            return dependents, ResponseError(claimed[2].decode("utf-8", "replace"))
        self._registered = True
        redis_now = float(claimed[-1])
        clock.learn(redis_now, sent_at)
        if claimed[0] is None:  # nothing claimed (an empty id is still a claim)
            self.state = "idle"
            self._next_waiting_check = redis_now + WAITING_CHECK_SECONDS
            earliest = float(claimed[1])
            return dependents, (earliest if earliest >= 0 else None)
        if check:
            self._next_waiting_check = redis_now + WAITING_CHECK_SECONDS
        # An id that is not UTF-8 keeps its bytes as surrogates: it is discarded, not a reason to stop.
        job_id = claimed[0].decode("utf-8", "surrogateescape")
        lane = self._last_lane = lanes[claimed[1] - 1]
        started = bool(claimed[3])
        raw = as_dict(claimed[2])
        if started:
            self.state = "busy"
            self.observe_wait(raw, lane, redis_now)
        claim = Claim(job_id, lane, raw, execution_id if started else None, redis_now)
        more = claimed[4]
        for i in range(0, len(more), 2):
            more_id = more[i].decode("utf-8", "surrogateescape")
            claim.more.append(Claim(more_id, lane, as_dict(more[i + 1]), None, redis_now, prefetched=True))
        return dependents, claim

    def _keys(self, lanes: tuple[str, ...]) -> list[bytes]:
        """The work script's lane KEYS for trying `lanes` in this order (worked out and encoded once per order)."""
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
            found = self._lane_keys[lanes] = [key.encode() for key in lane_keys]
        return found

    def planted(self, lanes: Sequence[str]) -> dict[str, list[str]]:
        """Keys of the wrong type (records planted in Redis) by lane, '' for the worker's own: one round trip."""
        names = self._worker_keys + self._keys(tuple(lanes))
        expected = WORKER_TYPES + LANE_TYPES * len(lanes)
        with self.connection.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.type(name)
            found = pipe.execute()
        wrong: dict[str, list[str]] = {}
        for i, (name, kind, want) in enumerate(zip(names, found, expected, strict=True)):
            kind = kind if isinstance(kind, bytes) else str(kind).encode()
            if kind not in (b"none", want):
                owner = lanes[(i - len(WORKER_TYPES)) // len(LANE_TYPES)] if i >= len(WORKER_TYPES) else ""
                wrong.setdefault(owner, []).append(f"{name.decode()} holds a {kind.decode()}, not a {want.decode()}")
        return wrong

    def wait(self, lanes: Sequence[str], timeout_seconds: float) -> None:
        """Block until a lane's doorbell rings or the timeout passes (the token only wakes us)."""
        self.connection.blpop([doorbell_key(lane) for lane in lanes], timeout=max(0.01, timeout_seconds))

    def requeue(self, job_id: str, lane: str, key: str | None = None, client: Any = None) -> None:
        """Move `job_id` from a claimed list (ours by default) back to the front of `lane`."""
        REQUEUE(
            keys=[key or self.key, keys.queue_key(lane), doorbell_key(lane), keys.job_key(job_id)],
            args=[job_id],
            client=client or self.connection,
        )

    def give_back(self, claims: Sequence[Claim]) -> None:
        """Put our prefetched `claims` back at the front of their lane, in their order: one round trip."""
        with self.connection.pipeline(transaction=False) as pipe:
            for claim in reversed(claims):
                self.requeue(claim.job_id, claim.lane, client=pipe)
            pipe.execute()

    def drop(self, job_id: str) -> None:
        """Forget a claimed id whose job no longer exists or must not run."""
        self.connection.lrem(self.key, 1, raw_id(job_id))

    def claimed(self, key: str | None = None) -> list[str]:
        return [i.decode("utf-8", "surrogateescape") for i in self.connection.lrange(key or self.key, 0, -1)]
