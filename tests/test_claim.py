"""The work script's claim part and the requeue script on a real Redis, and the lane order a worker claims in."""

from __future__ import annotations

import pytest
from redis import Redis

from service.core import clock, keys
from service.workers.claim import WAITING_CHECK_SECONDS, WORK, Claim, Claimer, LaneOrder, parse_weights

LANES = ["high", "default", "low"]
TTL = 100


@pytest.fixture
def claimer(connection: Redis) -> Claimer:
    return Claimer(connection, "w1")


def put(connection: Redis, lane: str, *job_ids: str, status: str = "queued") -> None:
    """Job hashes in `status`, their ids pushed to `lane` with one doorbell token each (as ServiceQueue does)."""
    for job_id in job_ids:
        connection.hset(keys.job_key(job_id), mapping={"status": status, "origin": lane})
        connection.rpush(keys.queue_key(lane), job_id)
        connection.rpush(keys.doorbell_key(lane), 1)


def redis_now(connection: Redis) -> float:
    seconds, micros = connection.time()
    return seconds + micros / 1e6


def claimed(claimer: Claimer, lanes: list[str] = LANES) -> Claim:
    found = claimer.claim(lanes, TTL)
    assert isinstance(found, Claim), found
    return found


def test_a_claim_takes_the_head_of_the_first_non_empty_lane_in_the_order_given(
    connection: Redis, claimer: Claimer
) -> None:
    put(connection, "default", "d1", "d2")
    put(connection, "low", "l1")
    assert claimed(claimer).job_id == "d1"
    assert claimed(claimer, ["low", "high", "default"]).job_id == "l1"
    found = claimed(claimer)
    assert (found.job_id, found.lane) == ("d2", "default")
    assert connection.lrange(keys.claimed_key("w1"), 0, -1) == [b"d1", b"l1", b"d2"]
    assert connection.smembers(keys.CLAIMERS_KEY) == {b"w1"}


def test_a_claim_starts_a_queued_job_as_rq_would(connection: Redis, claimer: Claimer) -> None:
    put(connection, "default", "j1")
    connection.expire(keys.job_key("j1"), 1000)
    before = redis_now(connection)
    found = claimed(claimer)
    assert found.execution_id is not None and found.raw[b"status"] == b"started"
    job = connection.hgetall(keys.job_key("j1"))
    assert job[b"status"] == b"started" and job[b"worker_name"] == b"w1" and job[b"attempts"] == b"1"
    assert job[b"started_at"].endswith(b"Z") and b"last_heartbeat" not in job  # the heartbeat's, at its first beat
    assert connection.ttl(keys.job_key("j1")) == -1  # persisted while it runs
    composite = f"j1:{found.execution_id}"
    assert connection.zscore(keys.started_key("default"), composite) >= before + TTL
    assert before <= found.at <= redis_now(connection)  # when it started, on Redis's clock
    assert connection.hget(keys.worker_key("w1"), "state") == b"busy"
    # RQ's execution records are the heartbeat's to write, for a job still running at its next beat
    # (tests/test_worker_records.py): a claim writes none.
    assert not connection.exists(keys.EXECUTION_PREFIX + composite, keys.executions_key("j1"))
    assert not connection.exists(keys.worker_executions_key("w1"))


def test_a_claim_keeps_redis_time_and_teaches_it_to_the_process_clock(connection: Redis, claimer: Claimer) -> None:
    put(connection, "default", "j1")
    clock.set_offset(300.0)  # this process believes it is five minutes ahead
    try:
        before = redis_now(connection)
        found = claimed(claimer)
        after = redis_now(connection)
        composite = f"j1:{found.execution_id}"
        assert before <= found.at <= after
        assert before + TTL <= (connection.zscore(keys.started_key("default"), composite) or 0) <= after + TTL
        assert abs(clock.now() - redis_now(connection)) < 1  # learnt from the claim's answer
    finally:
        clock.set_offset(0.0)


def test_a_job_that_is_not_queued_is_claimed_but_not_started(connection: Redis, claimer: Claimer) -> None:
    put(connection, "default", "gone", status="canceled")
    found = claimed(claimer)
    assert found.execution_id is None and found.raw[b"status"] == b"canceled"
    assert connection.hget(keys.job_key("gone"), "attempts") is None
    assert connection.zcard(keys.started_key("default")) == 0
    assert not connection.exists(keys.worker_key("w1"), keys.executions_key("gone"))


def test_an_id_whose_job_hash_vanished_is_claimed_with_an_empty_hash(connection: Redis, claimer: Claimer) -> None:
    connection.rpush(keys.queue_key("low"), "ghost")
    found = claimed(claimer)
    assert (found.job_id, found.raw, found.execution_id) == ("ghost", {}, None)
    assert not connection.exists(keys.job_key("ghost"))


def test_a_claim_consumes_one_doorbell_token_and_clears_those_of_empty_lanes_once_none_has_a_job(
    connection: Redis, claimer: Claimer
) -> None:
    put(connection, "default", "d1", "d2")
    connection.rpush(keys.doorbell_key("high"), 1, 1)  # stale: its lane is empty
    connection.rpush(keys.doorbell_key("low"), 1)  # not reached: default comes first
    claimed(claimer)
    assert connection.llen(keys.doorbell_key("default")) == 1
    assert connection.llen(keys.doorbell_key("high")) == 2  # left while a lane has jobs: no command per job
    assert connection.llen(keys.doorbell_key("low")) == 1
    claimed(claimer)
    assert claimer.claim(["high", "default"], TTL) is None
    assert not connection.exists(keys.doorbell_key("high"), keys.doorbell_key("default"))
    assert connection.llen(keys.doorbell_key("low")) == 1  # not tried


def test_waiting_jobs_whose_time_has_come_go_back_to_the_front_of_their_lane(
    connection: Redis, claimer: Claimer
) -> None:
    put(connection, "default", "fresh")
    for job_id in ("due", "later"):
        connection.hset(keys.job_key(job_id), "status", "queued")
    now = redis_now(connection)
    connection.zadd(keys.waiting_key("default"), {"due": now - 1, "later": now + 3600})
    assert claimed(claimer).job_id == "due"
    assert connection.lrange(keys.queue_key("default"), 0, -1) == [b"fresh"]
    assert connection.zrange(keys.waiting_key("default"), 0, -1) == [b"later"]


def test_empty_lanes_give_none_or_the_earliest_waiting_time(connection: Redis, claimer: Claimer) -> None:
    assert claimer.claim(LANES, TTL) is None
    connection.zadd(keys.waiting_key("low"), {"later": 5_000_000_000, "sooner": 4_000_000_000})
    assert claimer.claim(LANES, TTL) == 4_000_000_000
    assert claimer.claim(["high"], TTL) is None  # only the lanes tried count


def test_the_work_script_takes_its_keys_from_the_caller(connection: Redis) -> None:
    put(connection, "x", "j1")
    lane = [keys.queue_key("x"), keys.waiting_key("x"), keys.doorbell_key("x"), keys.started_key("x")]
    lane += [keys.groups_key("x"), keys.held_groups_key("x")]
    worker = [keys.claimed_key("w9"), keys.CLAIMERS_KEY, keys.worker_key("w9"), keys.worker_executions_key("w9")]
    worker.append(keys.METRICS_KEY)
    reply = WORK(
        keys=worker + lane,
        args=["w9", "", "", "", "1", 0, 0, "e1", "2030-01-01T00:00:00.000000Z", TTL, "1", 1],
        client=connection,
    )
    assert reply[:2] == [[], 0] and reply[2][0] == b"j1" and reply[2][1] == 1 and reply[2][3] == 1
    assert connection.lrange(keys.claimed_key("w9"), 0, -1) == [b"j1"]
    assert connection.zrange(keys.started_key("x"), 0, -1) == [b"j1:e1"]
    assert connection.smembers(keys.CLAIMERS_KEY) == {b"w9"}


def test_requeue_puts_a_claimed_job_back_at_the_front_queued_and_rings(connection: Redis, claimer: Claimer) -> None:
    put(connection, "default", "j1", "j2")
    claimed(claimer)
    claimer.requeue("j1", "default")
    assert connection.lrange(keys.queue_key("default"), 0, -1) == [b"j1", b"j2"]
    assert connection.llen(keys.claimed_key("w1")) == 0
    assert connection.hget(keys.job_key("j1"), "status") == b"queued"
    assert connection.llen(keys.doorbell_key("default")) == 2


def test_requeue_of_a_vanished_job_does_not_recreate_its_hash(connection: Redis, claimer: Claimer) -> None:
    connection.rpush(keys.claimed_key("w1"), "ghost")
    claimer.requeue("ghost", "low")
    assert connection.lrange(keys.queue_key("low"), 0, -1) == [b"ghost"]
    assert not connection.exists(keys.job_key("ghost"))


def test_strict_order_is_always_the_lanes_as_given() -> None:
    order = LaneOrder(LANES)
    assert [order.next() for _ in range(3)] == [LANES] * 3


def test_weighted_order_prefers_each_lane_by_its_weight_and_falls_back_in_priority_order() -> None:
    order = LaneOrder(LANES, {"high": 6, "default": 3, "low": 1})
    first = [order.next() for _ in range(10)]
    assert [lanes[0] for lanes in first].count("high") == 6
    assert [lanes[0] for lanes in first].count("default") == 3
    assert [lanes[0] for lanes in first].count("low") == 1
    assert first[0] == ["high", "default", "low"] and ["low", "high", "default"] in first


def test_weights_are_parsed_and_bad_ones_named() -> None:
    assert parse_weights("high=6, low=2", LANES) == {"high": 6, "default": 1, "low": 2}
    for bad in ("high=0", "urgent=3", "high", "low=x"):
        with pytest.raises(ValueError, match="expected <lane>="):
            parse_weights(bad, LANES)


def test_while_jobs_keep_coming_held_back_jobs_are_looked_for_at_most_every_100_ms(
    connection: Redis, claimer: Claimer
) -> None:
    """The bound (WAITING_CHECK_SECONDS, on Redis's clock) a due held-back job may wait while lanes have jobs."""
    put(connection, "default", "a", "b", "c")
    connection.hset(keys.job_key("due"), "status", "queued")
    assert claimed(claimer).job_id == "a"  # looked (nothing held back yet): not again for 100 ms
    connection.zadd(keys.waiting_key("default"), {"due": redis_now(connection) - 1})
    clock.set_offset(-WAITING_CHECK_SECONDS * 50)  # this process's clock says the 100 ms have not passed
    try:
        assert claimed(claimer).job_id == "b"  # "due" not looked for: one command less per claim
        clock.set_offset(WAITING_CHECK_SECONDS * 50)  # they have
        assert claimed(claimer).job_id == "due"
    finally:
        clock.set_offset(0.0)
    assert connection.lrange(keys.queue_key("default"), 0, -1) == [b"c"]


def test_a_claim_that_finds_the_lanes_empty_always_looks_for_held_back_jobs(
    connection: Redis, claimer: Claimer
) -> None:
    put(connection, "default", "a")
    connection.hset(keys.job_key("due"), "status", "queued")
    assert claimed(claimer).job_id == "a"
    connection.zadd(keys.waiting_key("default"), {"due": redis_now(connection) - 1})
    clock.set_offset(-WAITING_CHECK_SECONDS * 50)
    try:
        assert claimed(claimer).job_id == "due"  # in the same call that found the lanes empty
    finally:
        clock.set_offset(0.0)


def test_after_a_job_from_a_lower_lane_a_job_in_a_higher_one_still_comes_first(
    connection: Redis, claimer: Claimer
) -> None:
    """The claim starts at the lane of the last job only when every lane before it is empty."""
    put(connection, "low", "l1", "l2", "l3")
    assert claimed(claimer).job_id == "l1"
    assert claimed(claimer).job_id == "l2"
    put(connection, "default", "d1")
    assert claimed(claimer).job_id == "d1"
    assert claimed(claimer).job_id == "l3"
    put(connection, "high", "h1")
    put(connection, "low", "l4")
    assert claimed(claimer).job_id == "h1"
    assert claimed(claimer, ["low", "default", "high"]).job_id == "l4"
