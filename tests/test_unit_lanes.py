"""Lane order: strict priority, weights, the smooth weighted round-robin sequence, and the fall-back to other lanes."""

from __future__ import annotations

import pytest
from redis import Redis

import service.tasks.diag  # noqa: F401 - registers diag.echo
from service.core.lanes import LANES
from service.workers.claim import Claim, Claimer, LaneOrder, parse_weights
from tests.worker_fixtures import enqueue

WEIGHTS = {"high": 6, "default": 3, "low": 1}
# nginx's smooth weighted round-robin for 6:3:1, worked out by hand: each
# turn adds every lane's weight to its score, picks the highest (the first
# in priority order on a tie) and takes the total (10) off the pick.
SEQUENCE_6_3_1 = ["high", "default", "high", "high", "default", "high", "low", "high", "default", "high"]


def preferred(order: LaneOrder, turns: int) -> list[str]:
    return [order.next()[0] for _ in range(turns)]


def test_strict_order_is_always_the_lanes_in_priority_order() -> None:
    order = LaneOrder(list(LANES))
    assert [order.next() for _ in range(5)] == [["high", "default", "low"]] * 5


def test_weighted_order_follows_the_smooth_round_robin_sequence_and_repeats_it() -> None:
    order = LaneOrder(list(LANES), WEIGHTS)
    assert preferred(order, 30) == SEQUENCE_6_3_1 * 3


def test_every_lane_gets_its_weight_share_of_each_cycle_and_none_starves() -> None:
    order = LaneOrder(list(LANES), {"high": 100, "default": 10, "low": 1})
    turns = preferred(order, 111)
    assert {lane: turns.count(lane) for lane in LANES} == {"high": 100, "default": 10, "low": 1}


def test_equal_weights_take_turns() -> None:
    order = LaneOrder(list(LANES), {"high": 1, "default": 1, "low": 1})
    assert preferred(order, 6) == ["high", "default", "low"] * 2


def test_the_preferred_lane_is_followed_by_the_others_in_priority_order() -> None:
    order = LaneOrder(list(LANES), WEIGHTS)
    for lanes in (order.next() for _ in range(10)):
        assert lanes[1:] == [lane for lane in LANES if lane != lanes[0]]


def test_one_lane_has_no_weights_to_apply() -> None:
    order = LaneOrder(["low"], {"low": 5})
    assert [order.next() for _ in range(3)] == [["low"]] * 3


@pytest.mark.parametrize("more", [1, 3, 7])
def test_batches_of_equal_size_charged_as_turns_repeat_a_cycle_of_the_weights(more: int) -> None:
    order = LaneOrder(list(LANES), WEIGHTS)
    batches = []
    for _ in range(30):
        batches.append(order.next()[0])
        order.charge(order.preferred, more)  # `more` jobs prefetched with the claim: 1 + more turns in all
    cycle = batches[:10]
    assert batches == cycle * 3  # so every 10 batches in a row hold 6, 3 and 1 of the lanes
    assert {lane: cycle.count(lane) for lane in LANES} == WEIGHTS


def test_batches_of_any_size_give_each_lane_its_weight_share_of_jobs_within_a_batch() -> None:
    order = LaneOrder(list(LANES), WEIGHTS)
    jobs: list[str] = []
    for turn in range(500):
        size = 1 + (turn * 7919) % 8  # 1 to 8 jobs a claim, in no pattern the weights share
        jobs += [order.next()[0]] * size
        order.charge(order.preferred, size - 1)
        for lane in LANES:
            assert abs(jobs.count(lane) - WEIGHTS[lane] * len(jobs) / 10) <= 8, (lane, len(jobs))


def test_jobs_given_back_unrun_are_refunded_to_their_lane() -> None:
    charged, refunded = LaneOrder(list(LANES), WEIGHTS), LaneOrder(list(LANES), WEIGHTS)
    for _ in range(10):
        charged.next()
        refunded.next()
        refunded.charge(refunded.preferred, 7)
        refunded.charge(refunded.preferred, -7)  # past the bound: the batch's rest went back
    assert preferred(charged, 20) == preferred(refunded, 20)


def test_weights_parse_with_a_default_of_one_and_name_a_bad_entry() -> None:
    assert parse_weights("high=6, low=2", LANES) == {"high": 6, "default": 1, "low": 2}
    assert parse_weights("", LANES) == {"high": 1, "default": 1, "low": 1}
    for bad in ("high=0", "high=x", "urgent=3", "high"):
        with pytest.raises(ValueError, match=repr(bad)):
            parse_weights(bad, LANES)


def fill(connection: Redis, per_lane: int) -> None:
    for lane in LANES:
        for i in range(per_lane):
            enqueue(connection, "diag.echo", i, lane=lane)


def claim_lanes(connection: Redis, order: LaneOrder, count: int) -> list[str]:
    claimer = Claimer(connection, "lanes-test")
    claims = [claimer.claim(order.next(), 60) for _ in range(count)]
    assert all(isinstance(c, Claim) for c in claims)
    return [c.lane for c in claims]  # type: ignore[union-attr]


def test_claims_on_real_redis_follow_the_weighted_sequence_while_every_lane_has_jobs(connection: Redis) -> None:
    fill(connection, 10)
    assert claim_lanes(connection, LaneOrder(list(LANES), WEIGHTS), 10) == SEQUENCE_6_3_1


def test_an_empty_preferred_lane_falls_back_to_the_next_one_in_priority_order(connection: Redis) -> None:
    for i in range(10):
        enqueue(connection, "diag.echo", i, lane="low")
    enqueue(connection, "diag.echo", 0, lane="default")
    # high is preferred on the first turn but empty: default is next in priority order, then low.
    assert claim_lanes(connection, LaneOrder(list(LANES), WEIGHTS), 3) == ["default", "low", "low"]


def test_strict_order_drains_a_higher_lane_first(connection: Redis) -> None:
    fill(connection, 2)
    assert claim_lanes(connection, LaneOrder(list(LANES)), 6) == ["high", "high", "default", "default", "low", "low"]
