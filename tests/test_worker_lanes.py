"""Lane order: strict priority starves `low` under a `high` flood; weighted mode serves it."""

from __future__ import annotations

from redis import Redis

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
