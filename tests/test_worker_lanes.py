"""Lane order: strict priority starves `low` under a `high` flood; weighted mode serves it."""

from __future__ import annotations

from redis import Redis

from service.workers.prefetch import MAX_PREFETCH
from tests.helpers import wait_until
from tests.processes import Processes
from tests.worker_fixtures import enqueue_many, recorded, start_worker

HIGH_FLOOD = 300
LOW = 10


def flood(connection: Redis) -> None:
    calls = [("high", ("order", f"h{i}")) for i in range(HIGH_FLOOD)]
    calls += [("low", ("order", f"l{i}")) for i in range(LOW)]
    enqueue_many(connection, "diag.record", calls)


def test_weighted_mode_serves_low_while_high_is_flooded(connection: Redis, processes: Processes) -> None:
    flood(connection)
    start_worker(processes, "high", "default", "low", "--mode", "weighted", "--weights", "high=6,default=3,low=1")
    order = wait_until(lambda: (o := recorded(connection, "order")) and len(o) == HIGH_FLOOD + LOW and o, timeout=60)
    last_low = max(i for i, v in enumerate(order) if v.startswith("l"))
    # 6:3:1: one claim in ten prefers `low` (default's share falls back to high);
    # strict order would put the last `low` at position 309.
    assert last_low < 10 * LOW + 20, f"low finished at position {last_low} of {len(order)}"
    assert order[0].startswith("h")


def test_a_flood_of_every_lane_is_prefetched_and_each_lane_keeps_its_weight_share(
    connection: Redis, processes: Processes
) -> None:
    weights = {"high": 6, "default": 3, "low": 1}
    enqueue_many(
        connection, "diag.record", [(lane, ("order", lane)) for lane, w in weights.items() for _ in range(100 * w)]
    )
    connection.config_resetstat()
    worker = start_worker(processes, "high", "default", "low", "--mode", "weighted", "--burst")
    assert worker.wait(timeout=60) == 0
    calls = int(connection.info("commandstats")["cmdstat_evalsha"]["calls"])
    order = recorded(connection, "order")
    assert len(order) == 1000 and calls < len(order) * 3 / 4  # several jobs a call, as in strict order
    # A batch of n jobs counts as n turns of its lane: after each batch every lane has run its weight's share of
    # the jobs so far within a batch, and during one its lane runs up to a batch ahead (measured: within 6 jobs).
    for ran in range(1, 900):  # while every lane still has jobs
        for lane, weight in weights.items():
            share = order[:ran].count(lane)
            assert abs(share - ran * weight / 10) <= 2 * (MAX_PREFETCH + 1), (lane, ran, share)


def test_a_lane_whose_batches_run_past_the_bound_still_gets_its_weight_share(
    connection: Redis, processes: Processes
) -> None:
    enqueue_many(connection, "diag.record", [("high", ("order", "h"))] * HIGH_FLOOD * 2)
    enqueue_many(connection, "workertest.record_slowly", [("low", ("order", "l", 0.01))] * LOW * 2)
    start_worker(processes, "high", "default", "low", "--mode", "weighted")
    order = wait_until(lambda: (o := recorded(connection, "order")) and len(o) == 2 * (HIGH_FLOOD + LOW) and o, 60)
    last_low = max(i for i, v in enumerate(order) if v == "l")
    # Each `low` job runs past the 5 ms bound: the rest of its batch goes back unrun and is refunded to the
    # round-robin, so `low` keeps one turn in ten (charged a whole batch a job, it would run one job in ~80).
    assert last_low < 10 * 2 * LOW + 100, f"low finished at position {last_low} of {len(order)}"


def test_strict_mode_runs_low_only_after_high_is_empty(connection: Redis, processes: Processes) -> None:
    flood(connection)
    start_worker(processes, "high", "default", "low", "--mode", "strict")
    order = wait_until(lambda: (o := recorded(connection, "order")) and len(o) == HIGH_FLOOD + LOW and o, timeout=60)
    assert all(v.startswith("h") for v in order[:HIGH_FLOOD])


def test_weighted_mode_still_prefers_high(connection: Redis, processes: Processes) -> None:
    calls = [("low", ("order", f"l{i}")) for i in range(100)] + [("high", ("order", f"h{i}")) for i in range(100)]
    enqueue_many(connection, "diag.record", calls)
    start_worker(processes, "high", "default", "low", "--mode", "weighted")
    order = wait_until(lambda: (o := recorded(connection, "order")) and len(o) == 200 and o, timeout=60)
    first_half = order[:100]
    assert sum(v.startswith("h") for v in first_half) > 70
