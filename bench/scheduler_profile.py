"""Where a scheduled run's time goes: one burst pass split into Python CPU, Redis CPU and round trips.

Prints ONE JSON line. One private Redis (the embedded server, AOF on);
N per-user interval schedules all due at once (as bench/scheduler_burst.py
makes them), one ServiceScheduler pass in this process. Measured over the
pass: wall time; this process's CPU (planning, encoding, redis-py);
Redis's CPU (INFO cpu, main thread and I/O alike) and its per-command time
(INFO commandstats: the read and fire scripts and what they call); round
trips (the requests redis-py sent, pipelines counted once). Each per-run
figure sits next to the limit it implies on one core.

Usage: .venv/bin/python bench/scheduler_profile.py [--size 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis import Redis  # noqa: E402
from redis.connection import AbstractConnection  # noqa: E402

import service.tasks.diag  # noqa: E402, F401 - registers diag.*
from bench.scheduler_burst import settle  # noqa: E402
from service.dev.embedded_redis import EmbeddedRedis, selected_server  # noqa: E402
from service.schedules import operations as schedules  # noqa: E402
from service.schedules.scheduler import ServiceScheduler  # noqa: E402
from service.schedules.spec import isoformat  # noqa: E402


def redis_cpu_s(connection: Redis) -> float:
    info = connection.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def count_round_trips() -> list[int]:
    """Count every request redis-py sends from now on (a pipeline is one): returns the live counter."""
    sent = [0]
    original = AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        sent[0] += 1
        original(self, command, check_health)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    return sent


def profile(connection: Redis, size: int) -> dict[str, Any]:
    due = (datetime.now(UTC) + timedelta(seconds=15)).replace(microsecond=0)
    body = {"task": "diag.echo", "interval": 3600, "start_at": isoformat(due)}
    schedules.upsert_many(connection, {f"user-{n:06d}": {**body, "args": [n]} for n in range(size)})
    scheduler = ServiceScheduler(connection, clock=lambda: due + timedelta(milliseconds=1))
    assert scheduler.acquire_lock()
    settle(connection)
    connection.config_resetstat()
    sent = count_round_trips()
    redis_before, python_before, started = redis_cpu_s(connection), time.process_time(), time.perf_counter()
    fired = scheduler.enqueue_jobs()
    wall = time.perf_counter() - started
    python_s, redis_s, trips = time.process_time() - python_before, redis_cpu_s(connection) - redis_before, sent[0]
    assert fired == size, fired
    stats = connection.info("commandstats")
    commands = {k.removeprefix("cmdstat_"): v for k, v in stats.items()}
    calls = sum(v["calls"] for k, v in commands.items() if k not in ("info", "config|resetstat", "config"))
    top = sorted(commands.items(), key=lambda kv: -kv[1]["usec"])[:8]
    per_run_us = {"wall": wall / size * 1e6, "python_cpu": python_s / size * 1e6, "redis_cpu": redis_s / size * 1e6}
    return {
        "size": size,
        "pass_s": round(wall, 3),
        "python_cpu_s": round(python_s, 3),
        "redis_cpu_s": round(redis_s, 3),
        "round_trips": trips,
        "runs_per_round_trip": round(size / max(trips, 1)),
        "redis_commands_per_run": round(calls / size, 1),
        "per_run_us": {k: round(v, 1) for k, v in per_run_us.items()},
        "one_core_limit_runs_per_s": {k: round(1e6 / v) for k, v in per_run_us.items() if k != "wall"},
        "redis_usec_by_command": {k: {"calls": v["calls"], "usec": v["usec"]} for k, v in top},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000)
    options = parser.parse_args()
    loadavg = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        server = EmbeddedRedis(Path(folder) / "redis").start()
        try:
            figures = profile(Redis.from_url(server.url), options.size)
        finally:
            server.stop()
    out = {"bench": "scheduler_profile", "cores": os.cpu_count(), "loadavg_1m_at_start": round(loadavg, 2)}
    print(json.dumps({**out, "server": selected_server(), **figures}))


if __name__ == "__main__":
    main()
