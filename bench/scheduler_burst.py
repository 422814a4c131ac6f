"""Scheduler benchmark: a burst of N runs due in the same second, and firing lag, ours against rq-scheduler and RQ cron.

Prints ONE JSON line. Both variants run against the same private Redis (the
embedded server, AOF on, as in production); rounds alternate ours/stock so
the machine's noise hits both alike. Figures are medians over rounds, ratios
medians of per-round ratios.

- burst: N recurring per-user schedules (interval 3600 s, the user's number
  as argument) all due at the same second; one `enqueue_jobs()` pass is
  timed (ours: ServiceScheduler, Lua chunks of 250; stock: rq-scheduler
  0.14's `Scheduler.enqueue_jobs()` over N `schedule(interval=3600)` jobs).
  Both must leave N distinct job ids queued. Creating the N schedules is
  timed too (ours: upsert_many; stock: N calls to `schedule()`), and Redis
  memory per schedule is recorded, stored and after its first run (counters,
  run state and one run record; the run jobs themselves deleted first). RQ's
  own `rq.cron.CronScheduler` is the second peer: N interval jobs registered
  (in the process: RQ cron keeps no definitions in Redis), one
  `enqueue_jobs()` pass with all N due. Ours runs a second time with every
  schedule naming one shared 10,000-date calendar (no date today). Every
  timed pass starts once an AOF rewrite has finished, so a rewrite the set-up
  triggered does not land inside one variant's pass and not another's.
- lag: a real `scheduler.py` and a real `rqscheduler -i 1` each get one-shot
  probes due at scattered sub-second instants, with --stored other schedules
  (due an hour later) in Redis; lag = the job's enqueued_at - its due time.

`goals` lists each figure issue 17 set for the largest burst with its goal
and whether this run met it.

Usage: .venv/bin/python bench/scheduler_burst.py [--rounds 3] [--sizes 10000] [--big 100000] [--probes 12]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis import Redis  # noqa: E402
from redis.exceptions import ResponseError  # noqa: E402
from rq.cron import CronScheduler  # noqa: E402
from rq.job import Job  # noqa: E402
from rq_scheduler import Scheduler  # noqa: E402

import service.tasks.diag  # noqa: E402, F401 - registers diag.*
from service.dev.embedded_redis import EmbeddedRedis, selected_server  # noqa: E402
from service.schedules import calendars  # noqa: E402
from service.schedules import operations as schedules  # noqa: E402
from service.schedules.scheduler import ServiceScheduler  # noqa: E402
from service.schedules.spec import isoformat  # noqa: E402

BIN = Path(sys.executable).parent


CREATE_CHUNK = 1000


def used_memory(connection: Redis) -> int:
    """Redis's memory for data: used_memory less the Lua VM's, which scripts grow and shrink as they run."""
    info = connection.info("memory")
    return int(info["used_memory"]) - int(info.get("used_memory_lua", 0))


def flush(connection: Redis) -> None:
    """Empty the database now: a lazy (background) flush would still be freeing the last round's memory."""
    connection.execute_command("FLUSHDB", "SYNC")


def settle(connection: Redis) -> None:
    """Rewrite the AOF now and wait for it: a timed pass then never shares the machine with a rewrite."""
    with contextlib.suppress(ResponseError):  # one is already running
        connection.bgrewriteaof()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        info = connection.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            return
        time.sleep(0.05)


def forget_runs(connection: Redis, job_ids: list[bytes]) -> None:
    """Delete the run jobs and what points at them, leaving the schedules as their first run left them."""
    for start in range(0, len(job_ids), 5000):
        connection.delete(*[b"rq:job:" + j for j in job_ids[start : start + 5000]])
    connection.delete("rq:queue:default", "svc:doorbell:default")


def burst_ours(connection: Redis, size: int, calendar: bool = False) -> dict[str, float]:
    """One pass over `size` due schedules; `calendar`: each names one shared 10,000-date calendar (not today)."""
    flush(connection)
    due = (datetime.now(UTC) + timedelta(seconds=15)).replace(microsecond=0)
    body: dict[str, Any] = {"task": "diag.echo", "interval": 3600, "start_at": isoformat(due)}
    if calendar:
        days = [(due + timedelta(days=1 + n)).date().isoformat() for n in range(10_000)]
        calendars.put(connection, "holidays", {"dates": days})
        body["skip_calendars"] = ["holidays"]
    memory = used_memory(connection)
    started = time.perf_counter()
    schedules.upsert_many(connection, {f"user-{n:06d}": {**body, "args": [n]} for n in range(size)})
    created = time.perf_counter() - started
    stored = used_memory(connection) - memory
    started = time.perf_counter()
    page = schedules.list_schedules(connection, cursor=f"user-{size // 2:06d}", limit=100)
    list_ms = (time.perf_counter() - started) * 1000
    assert len(page["schedules"]) == 100
    scheduler = ServiceScheduler(connection, clock=lambda: due + timedelta(milliseconds=1))
    assert scheduler.acquire_lock()
    settle(connection)
    started = time.perf_counter()
    fired = scheduler.enqueue_jobs()
    elapsed = time.perf_counter() - started
    queued = connection.lrange("rq:queue:default", 0, -1)
    assert fired == size and len(queued) == size == len(set(queued)), (fired, len(queued))
    forget_runs(connection, queued)
    after_run = used_memory(connection) - memory
    return {
        "pass_s": elapsed,
        "create_s": created,
        "bytes_per_schedule": stored / size,
        "bytes_per_schedule_after_a_run": after_run / size,
        "list_page_ms": list_ms,
    }


def burst_stock(connection: Redis, size: int) -> dict[str, float]:
    flush(connection)
    scheduler = Scheduler(queue_name="default", connection=connection, interval=1)
    # Naive UTC, as rq-scheduler expects; due one second ago so the pass takes them all.
    due = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1)
    memory = used_memory(connection)
    started = time.perf_counter()
    for chunk in range(0, size, CREATE_CHUNK):  # pipelined, as ours is batched: only the pass is compared
        with connection.pipeline() as pipe:
            scheduler.connection = pipe  # rq-scheduler writes through its connection
            for n in range(chunk, min(chunk + CREATE_CHUNK, size)):
                scheduler.schedule(scheduled_time=due, func="bench.worker_jobs.noop", args=[n], interval=3600)
            pipe.execute()
    scheduler.connection = connection
    created = time.perf_counter() - started
    memory = (used_memory(connection) - memory) / size
    settle(connection)
    started = time.perf_counter()
    scheduler.enqueue_jobs()
    elapsed = time.perf_counter() - started
    queued = connection.lrange("rq:queue:default", 0, -1)
    assert len(queued) == size == len(set(queued)), len(queued)
    return {"pass_s": elapsed, "create_s": created, "bytes_per_schedule": memory}


def burst_cron(connection: Redis, size: int) -> dict[str, float]:
    from bench.worker_jobs import noop

    flush(connection)
    scheduler = CronScheduler(connection, logging_level="WARNING")
    for n in range(size):
        scheduler.register(noop, "default", args=(n,), interval=3600, name=f"user-{n:06d}")
    settle(connection)
    started = time.perf_counter()
    fired = scheduler.enqueue_jobs()
    elapsed = time.perf_counter() - started
    queued = connection.lrange("rq:queue:default", 0, -1)
    assert len(fired) == size and len(queued) == size == len(set(queued)), len(queued)
    return {"pass_s": elapsed}


def store_idle(connection: Redis, count: int, ours: bool) -> None:
    """Store `count` schedules first due in an hour (the load a lag probe competes with)."""
    if not count:
        return
    later = datetime.now(UTC) + timedelta(hours=1)
    if ours:
        body = {"task": "diag.echo", "args": [1], "interval": 3600, "start_at": isoformat(later)}
        schedules.upsert_many(connection, {f"idle-{n:06d}": body for n in range(count)})
        return
    scheduler = Scheduler(queue_name="default", connection=connection)
    with connection.pipeline() as pipe:
        scheduler.connection = pipe  # rq-scheduler writes through its connection: pipeline the N schedule() calls
        for _ in range(count):
            scheduler.schedule(scheduled_time=later.replace(tzinfo=None), func="bench.worker_jobs.noop", interval=3600)
        pipe.execute()


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def probe_times(probes: int) -> list[datetime]:
    base = datetime.now(UTC) + timedelta(seconds=3)
    # Scattered over ~probes * 0.77 s with fractional offsets, so polling phase does not favour anyone.
    return [base + timedelta(seconds=0.77 * n + 0.13) for n in range(probes)]


def enqueued_at(connection: Redis, job_id: str) -> datetime | None:
    raw = connection.hget(f"rq:job:{job_id}", "enqueued_at")
    if not raw:
        return None
    return datetime.strptime(raw.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def wait_for(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("benchmark probe timed out")
        time.sleep(0.05)


def lag_ours(connection: Redis, env: dict[str, str], probes: int, stored: int) -> list[float]:
    flush(connection)
    store_idle(connection, stored, ours=True)
    process = start([sys.executable, "scheduler.py"], env)
    try:
        times = probe_times(probes)
        for n, due in enumerate(times):
            schedules.upsert(connection, f"probe-{n}", {"task": "diag.echo", "at": isoformat(due)})
        ids = [f"probe-{n}-{int(due.timestamp())}" for n, due in enumerate(times)]
        wait_for(lambda: all(connection.exists(f"rq:job:{i}") for i in ids), 30 + probes)
        return [(enqueued_at(connection, i) - due).total_seconds() * 1000 for i, due in zip(ids, times, strict=True)]
    finally:
        stop(process)


def lag_stock(connection: Redis, env: dict[str, str], probes: int, url: str, stored: int) -> list[float]:
    flush(connection)
    store_idle(connection, stored, ours=False)
    process = start([str(BIN / "rqscheduler"), "--url", url, "-i", "1"], env)
    try:
        scheduler = Scheduler(queue_name="default", connection=connection)
        times = probe_times(probes)
        jobs = [
            scheduler.enqueue_at(due.replace(tzinfo=None), "bench.worker_jobs.noop")  # naive UTC
            for due in times
        ]
        wait_for(lambda: all(connection.hexists(f"rq:job:{j.id}", "enqueued_at") for j in jobs), 60 + probes)
        return [
            (enqueued_at(connection, Job.fetch(job.id, connection=connection).id) - due).total_seconds() * 1000
            for job, due in zip(jobs, times, strict=True)
        ]
    finally:
        stop(process)


def median_of(rounds: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def burst_figures(connection: Redis, size: int, rounds: int) -> dict[str, Any]:
    ours, stock, cron, calendar = [], [], [], []
    for _ in range(rounds):
        ours.append(burst_ours(connection, size))
        calendar.append(burst_ours(connection, size, calendar=True))
        stock.append(burst_stock(connection, size))
        cron.append(burst_cron(connection, size))
    calendar_ratios = [c["pass_s"] / o["pass_s"] for o, c in zip(ours, calendar, strict=True)]
    ratios = [s["pass_s"] / o["pass_s"] for o, s in zip(ours, stock, strict=True)]
    cron_ratios = [c["pass_s"] / o["pass_s"] for o, c in zip(ours, cron, strict=True)]
    return {
        "n": size,
        "rounds": rounds,
        "ours_pass_s": round(median_of(ours, "pass_s"), 3),
        "stock_pass_s": round(median_of(stock, "pass_s"), 3),
        "ours_runs_per_s": round(size / median_of(ours, "pass_s")),
        "stock_runs_per_s": round(size / median_of(stock, "pass_s")),
        "rq_cron_pass_s": round(median_of(cron, "pass_s"), 3),
        "rq_cron_runs_per_s": round(size / median_of(cron, "pass_s")),
        "speedup_vs_stock": round(statistics.median(ratios), 2),
        "speedup_vs_rq_cron": round(statistics.median(cron_ratios), 2),
        "ours_calendar_pass_s": round(median_of(calendar, "pass_s"), 3),
        # every schedule naming one shared 10,000-date calendar, against none: goal at most 1.10
        "calendar_pass_ratio": round(statistics.median(calendar_ratios), 3),
        "ours_create_per_s": round(size / median_of(ours, "create_s")),
        "stock_create_per_s": round(size / median_of(stock, "create_s")),
        "ours_bytes_per_schedule": round(median_of(ours, "bytes_per_schedule")),
        "ours_bytes_per_schedule_after_a_run": round(median_of(ours, "bytes_per_schedule_after_a_run")),
        "ours_list_page_of_100_ms": round(median_of(ours, "list_page_ms"), 1),
        "stock_bytes_per_schedule": round(median_of(stock, "bytes_per_schedule")),
    }


def lag_figures(
    connection: Redis, env: dict[str, str], url: str, rounds: int, probes: int, stored: int
) -> dict[str, Any]:
    ours, stock = [], []
    for _ in range(rounds):
        ours += lag_ours(connection, env, probes, stored)
        stock += lag_stock(connection, env, probes, url, stored)

    def summary(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            "p50_ms": round(statistics.median(ordered), 1),
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 1),
            "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 1),
            "max_ms": round(ordered[-1], 1),
        }

    return {
        "probes": len(ours),
        "schedules_stored": stored,
        "ours": summary(ours),
        "stock_rqscheduler_i1": summary(stock),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="10000", help="burst sizes measured for --rounds rounds")
    parser.add_argument("--big", type=int, default=100000, help="one more size, one round (0: skip)")
    parser.add_argument("--probes", type=int, default=12, help="lag probes per round and variant")
    parser.add_argument("--stored", type=int, default=50000, help="schedules stored (not due) during the lag probes")
    parser.add_argument("--lag-rounds", type=int, default=2)
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        server = EmbeddedRedis(Path(folder)).start()
        try:
            connection = Redis.from_url(server.url)
            env = {**os.environ, "REDIS_URL": server.url, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING"}
            env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
            loadavg = os.getloadavg()[0]
            bursts = [burst_figures(connection, int(s), options.rounds) for s in options.sizes.split(",")]
            if options.big:
                bursts.append(burst_figures(connection, options.big, 1))
            lag = lag_figures(connection, env, server.url, options.lag_rounds, options.probes, options.stored)
        finally:
            server.stop()
    out = {"bench": "scheduler_burst", "cores": os.cpu_count(), "loadavg_1m_at_start": round(loadavg, 2)}
    figures = {"server": selected_server(), "burst": bursts, "lag": lag, "goals": goals(bursts[-1], lag)}
    print(json.dumps({**out, **figures}))


def goals(biggest: dict[str, Any], lag: dict[str, Any]) -> list[dict[str, Any]]:
    """Each figure issue 17 (and 16, for calendars) set for the largest burst, with its goal and met or missed."""
    n = f"{biggest['n']:,}"
    wanted = [
        (f"{n}-run burst vs RQ's CronScheduler", biggest["speedup_vs_rq_cron"], ">=", 10),
        (f"{n}-run burst vs rq-scheduler", biggest["speedup_vs_stock"], ">=", 20),
        (f"Redis bytes per stored schedule ({n})", biggest["ours_bytes_per_schedule"], "<=", 600),
        (f"Redis bytes per schedule after a run ({n})", biggest["ours_bytes_per_schedule_after_a_run"], "<=", 600),
        (f"pass with a shared 10,000-date calendar / without ({n})", biggest["calendar_pass_ratio"], "<=", 1.10),
        ("firing lag p99, ms", lag["ours"]["p99_ms"], "<=", 1000),
    ]
    return [
        {"figure": name, "value": value, "goal": f"{op} {goal}", "met": value >= goal if op == ">=" else value <= goal}
        for name, value, op, goal in wanted
    ]


if __name__ == "__main__":
    main()
