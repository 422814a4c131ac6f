"""Redis ceiling and cost per job: how close each path is to what Redis on this machine can do.

Prints ONE JSON line.

- ceiling: redis-benchmark (Debian's, if installed) LPUSH/RPOP/ZADD with one
  and two clients, unpipelined and with -P 16; and a redis-py loop, one
  command per round trip and pipelines of 16 (what one Python process can
  send);
- per job, for each path, ours next to its stock peer: Redis commands
  (`CONFIG RESETSTAT`, then `INFO commandstats`), round trips (redis-py
  patched to count each send, worker processes and their forks included:
  bench/rt_count.py) and Redis CPU (`INFO cpu`), divided by the jobs; the
  worker paths drain jobs queued in `low` (a strict worker), and, for the
  Procfile's `worker` line (`--mode weighted`), jobs queued 6:3:1 in all
  three lanes (stock SimpleWorker drains the same);
- the dashboard charts' rollup, which no job pays for: what one minute's
  summary costs (the one writer, and each other process's claim), and the
  bytes of 24 hours of summaries;
- the no-fork worker path with 1, 2 and 4 worker processes on one Redis:
  jobs/s, Redis CPU % and Redis CPU and commands per job (start and stop
  included), and the jobs/s one Redis could serve at that cost;
- Redis memory per finished POST /jobs job kept for its result_ttl, with the
  servers' defaults (what a managed Redis gets) and with the embedded
  server's config, for a job with one small argument and one with 128 bytes,
  and what each part of it takes (job hash, result stream, finished registry
  entry, each with its key and expiry);
- goals: each figure with its goal and met or missed.

Usage: .venv/bin/python bench/redis_costs.py [--jobs 1000] [--fork-jobs 200] [--scaling-jobs 2000] [--memory-only]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis import Redis  # noqa: E402
from rq import Queue  # noqa: E402
from rq_scheduler import Scheduler  # noqa: E402

import service.tasks.diag  # noqa: E402, F401 - registers diag.*
from bench import rt_count  # noqa: E402
from service.dev.embedded_redis import EmbeddedRedis  # noqa: E402
from service.jobs import enqueue  # noqa: E402
from service.jobs.model import ServiceQueue  # noqa: E402
from service.jobs.schemas import JobRequest  # noqa: E402
from service.ops import rollup  # noqa: E402
from service.schedules import operations as schedules  # noqa: E402
from service.schedules.scheduler import ServiceScheduler  # noqa: E402
from service.schedules.spec import isoformat  # noqa: E402

NOOP = "bench.worker_jobs.noop"
LANES = ["high", "default", "low"]
# The Procfile's `worker` line serves every lane: its jobs fill them 6:3:1, as its weights share them out.
WEIGHTED_FILL = ("high",) * 6 + ("default",) * 3 + ("low",)


def ceiling(server: EmbeddedRedis, connection: Redis) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tool = shutil.which("redis-benchmark")
    if tool:
        host, port = (
            connection.connection_pool.connection_kwargs["host"],
            connection.connection_pool.connection_kwargs["port"],
        )
        for clients in (1, 2):
            for pipeline, requests in ((1, 100_000), (16, 500_000)):
                text = subprocess.run(
                    [tool, "-h", str(host), "-p", str(port), "-t", "lpush,rpop,zadd", "-r", "100000",
                     "-n", str(requests), "-c", str(clients), "-P", str(pipeline), "-q", "--csv"],
                    capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                for test, rps in re.findall(r'"(LPUSH|RPOP|ZADD)[^"]*","([\d.]+)"', text):
                    out[f"{test.lower()}_c{clients}_p{pipeline}_ops_per_s"] = round(float(rps))
        connection.flushdb()
    else:
        out["redis_benchmark"] = "not installed"
    started = time.perf_counter()
    for n in range(20_000):
        connection.lpush("bench:ceiling", n)
    out["redis_py_lpush_1_per_round_trip_ops_per_s"] = round(20_000 / (time.perf_counter() - started))
    started = time.perf_counter()
    pipe = connection.pipeline(transaction=False)
    for n in range(100_000):
        pipe.lpush("bench:ceiling", n)
        if n % 16 == 15:
            pipe.execute()
    out["redis_py_lpush_pipeline_16_ops_per_s"] = round(100_000 / (time.perf_counter() - started))
    connection.flushdb()
    return out


def commands(connection: Redis) -> dict[str, int]:
    stats = connection.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def redis_cpu(connection: Redis) -> float:
    cpu = connection.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def measure(connection: Redis, jobs: int, run: Callable[[], int]) -> dict[str, Any]:
    """Run `run` (returns its round trips) between RESETSTAT and INFO; per-job figures."""
    connection.config_resetstat()
    cpu = redis_cpu(connection)
    started = time.perf_counter()
    round_trips = run()
    wall = time.perf_counter() - started
    cpu = redis_cpu(connection) - cpu
    calls = commands(connection)
    calls.pop("info", None)
    calls.pop("config|resetstat", None)
    calls.pop("config", None)
    total = sum(calls.values())
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:8]
    return {
        "commands_per_job": round(total / jobs, 2),
        "round_trips_per_job": round(round_trips / jobs, 2),
        "redis_cpu_us_per_job": round(cpu / jobs * 1e6, 1),
        "wall_us_per_job": round(wall / jobs * 1e6),
        "top_commands_per_job": {k: round(v / jobs, 2) for k, v in top},
    }


def in_process(action: Callable[[], None]) -> Callable[[], int]:
    def run() -> int:
        counter = rt_count.install()
        before = counter[0]
        action()
        return counter[0] - before - 1  # the INFO cpu before the action

    return run


def in_processes(url: str, argv: list[str], folder: Path) -> Callable[[], int]:
    def run() -> int:
        out = folder / f"rt-{time.monotonic_ns()}"
        env = {**os.environ, "REDIS_URL": url, "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / "rt_count.py"), str(out), *argv],
            cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600,
        )  # fmt: skip
        return sum(int(line) for line in out.read_text().split())

    return run


def fill(connection: Redis, ours: bool, count: int, lanes: tuple[str, ...] = ("low",)) -> None:
    """`count` no-op jobs, the i-th in lanes[i % len(lanes)] (by default all in `low`, the last lane tried)."""
    kind = ServiceQueue if ours else Queue
    queues = {lane: kind(lane, connection=connection) for lane in lanes}
    with connection.pipeline() as pipe:
        for i in range(count):
            queues[lanes[i % len(lanes)]].enqueue_call("diag.echo" if ours else NOOP, args=[1], pipeline=pipe)
        pipe.execute()


def paths(connection: Redis, url: str, options: Any, folder: Path) -> dict[str, Any]:
    n, nf = options.jobs, options.fork_jobs
    out: dict[str, Any] = {}
    request = JobRequest(task="diag.echo", args=[1])
    stock = Queue("default", connection=connection)

    def case(name: str, jobs: int, run: Callable[[], int], prepare: Callable[[], None] | None = None) -> None:
        connection.flushdb()
        if prepare:
            prepare()
        out[name] = measure(connection, jobs, run)

    case(
        "ours_enqueue (POST /jobs path)",
        n,
        in_process(lambda: [enqueue.enqueue(connection, request) for _ in range(n)]),
    )
    case("rq_enqueue", n, in_process(lambda: [stock.enqueue_call(NOOP, args=[1]) for _ in range(n)]))
    case(
        "ours_enqueue_many_100 (POST /jobs/batch path)",
        n,
        in_process(lambda: [enqueue.enqueue_many(connection, [request] * 100) for _ in range(n // 100)]),
    )
    case(
        "rq_enqueue_many_100",
        n,
        in_process(lambda: [stock.enqueue_many([Queue.prepare_data(NOOP, args=[1])] * 100) for _ in range(n // 100)]),
    )
    ours = ["worker.py", *LANES, "--burst", "--no-scheduler"]
    rq = ["-m", "rq.cli", "worker", "-u", url, "-q", "--burst"]
    case("ours_worker_nofork", n, in_processes(url, [*ours, "--no-fork"], folder), lambda: fill(connection, True, n))
    case(
        "rq_simpleworker",
        n,
        in_processes(url, [*rq, "-w", "rq.SimpleWorker", *LANES], folder),
        lambda: fill(connection, False, n),
    )
    case(  # the Procfile's `worker` line, its jobs in every lane
        "ours_worker_weighted",
        n,
        in_processes(url, [*ours, "--no-fork", "--mode", "weighted"], folder),
        lambda: fill(connection, True, n, WEIGHTED_FILL),
    )
    case(
        "rq_simpleworker_3_lanes",
        n,
        in_processes(url, [*rq, "-w", "rq.SimpleWorker", *LANES], folder),
        lambda: fill(connection, False, n, WEIGHTED_FILL),
    )
    case("ours_worker_fork", nf, in_processes(url, [*ours, "--fork"], folder), lambda: fill(connection, True, nf))
    case("rq_worker_fork", nf, in_processes(url, [*rq, *LANES], folder), lambda: fill(connection, False, nf))

    def our_schedules() -> ServiceScheduler:
        due = (datetime.now(UTC) + timedelta(seconds=5)).replace(microsecond=0)
        body = {"task": "diag.echo", "args": [1], "interval": 3600, "start_at": isoformat(due)}
        schedules.upsert_many(connection, {f"user-{i:06d}": body for i in range(n)})
        scheduler = ServiceScheduler(connection, clock=lambda: due + timedelta(milliseconds=1))
        assert scheduler.acquire_lock()
        holder["ours"] = scheduler
        return scheduler

    holder: dict[str, Any] = {}
    case("ours_scheduler_pass_per_run", n, in_process(lambda: holder["ours"].enqueue_jobs()), our_schedules)

    def stock_schedules() -> None:
        scheduler = Scheduler(queue_name="default", connection=connection, interval=1)
        due = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1)
        for _ in range(n):
            scheduler.schedule(scheduled_time=due, func=NOOP, interval=3600)
        holder["stock"] = scheduler

    case("rq_scheduler_pass_per_run", n, in_process(lambda: holder["stock"].enqueue_jobs()), stock_schedules)
    return out


def sends(action: Callable[[], object]) -> Callable[[], int]:
    """Run `action` in this process; return its round trips (all of them: nothing else is sent meanwhile)."""

    def run() -> int:
        counter = rt_count.install()
        before = counter[0]
        action()
        return counter[0] - before

    return run


def rollup_costs(connection: Redis) -> dict[str, Any]:
    """One minute's summary: the writer's cost and each other process's, with the counters of 20 tasks in 3 lanes."""
    from service.core import metrics

    connection.flushdb()
    with connection.pipeline() as pipe:
        for task in range(20):
            for lane in LANES:
                for name in ("jobs_enqueued", "jobs_started", "jobs_finished", "jobs_failed", "jobs_retried"):
                    metrics.count(pipe, name, f"bench.task{task}", lane, amount=1000)
                metrics.observe(pipe, "job_duration_seconds", 0.01, f"bench.task{task}", lane)
        for lane in LANES:
            metrics.observe(pipe, "job_wait_seconds", 0.002, lane)
        pipe.execute()
    fill(connection, True, 100)
    clock = [time.time()]
    writer, other = rollup.Rollup(connection, lambda: clock[0]), rollup.Rollup(connection, lambda: clock[0])
    writer.tick()  # the first summary: totals to take differences from
    clock[0] += 60
    out: dict[str, Any] = {"metrics_hash_fields": connection.hlen(rollup.METRICS_KEY)}
    out["writer_per_minute"] = measure(connection, 1, sends(writer.tick))
    out["other_process_per_minute"] = measure(connection, 1, sends(other.tick))
    for _ in range(rollup.RETAIN_MINUTES):
        clock[0] += 60
        writer.tick()
    out["bytes_24h"] = connection.memory_usage(rollup.ROLLUP_KEY) + connection.memory_usage(rollup.ROLLUP_TOTALS_KEY)
    out["summaries_kept"] = connection.llen(rollup.ROLLUP_KEY)
    connection.flushdb()
    return out


def scaling(connection: Redis, url: str, jobs: int, counts: tuple[int, ...] = (1, 2, 4)) -> dict[str, Any]:
    """`jobs` no-fork jobs drained by 1, 2, 4 worker processes at once: throughput and Redis's share of the work."""
    out: dict[str, Any] = {}
    env = {**os.environ, "REDIS_URL": url, "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "worker.py", *LANES, "--burst", "--no-scheduler", "--no-fork"]
    for count in counts:
        connection.flushdb()
        fill(connection, True, jobs)
        connection.config_resetstat()
        client = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu, started = redis_cpu(connection), time.perf_counter()
        workers = [
            subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(count)
        ]
        for worker in workers:
            worker.wait(timeout=600)
        wall, cpu = time.perf_counter() - started, redis_cpu(connection) - cpu
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        client_s = after.ru_utime + after.ru_stime - client.ru_utime - client.ru_stime
        calls = commands(connection)
        for name in ("info", "config|resetstat", "config"):
            calls.pop(name, None)
        per_job_us = cpu / jobs * 1e6
        out[f"workers_{count}"] = {
            "jobs_per_s": round(jobs / wall),
            "redis_cpu_percent": round(100 * cpu / wall, 1),
            "redis_cpu_us_per_job": round(per_job_us, 1),
            "commands_per_job": round(sum(calls.values()) / jobs, 2),
            "worker_cpu_us_per_job": round(client_s / jobs * 1e6, 1),
            "redis_bound_jobs_per_s": round(1e6 / per_job_us) if per_job_us else None,
        }
    connection.flushdb()
    return out


# A managed Redis whose config is fixed: the servers' defaults of what the embedded server sets.
SERVER_DEFAULTS = {"stream-node-max-bytes": "4096", "hash-max-ziplist-value": "64"}
# A job's arguments: the bench's usual small integer, and 128 hex characters (its hash's `data` is then over 64 bytes).
PAYLOADS = {"": [1], "_args_128B": [hashlib.sha512(b"bench").hexdigest()]}


def finished_job_memory(connection: Redis, url: str, jobs: int) -> dict[str, Any]:
    """Bytes of Redis memory per finished POST /jobs job (job hash, result stream, registry entry) while its result
    is kept: with the servers' defaults (a managed Redis) and with the embedded server's config."""
    out: dict[str, Any] = {}
    env = {**os.environ, "REDIS_URL": url, "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "worker.py", "low", "--burst", "--no-scheduler", "--no-fork"]
    embedded = {name: connection.config_get(name)[name] for name in SERVER_DEFAULTS}
    for label, config in (("server_defaults", SERVER_DEFAULTS), ("embedded_config", embedded)):
        for suffix, args in PAYLOADS.items():
            connection.flushdb()
            for name, value in config.items():
                connection.config_set(name, value)
            request = JobRequest(task="diag.echo", args=args, queue="low")
            for count in (5, jobs):  # the first 5 create what every job shares (counters, registries, the worker)
                before = int(connection.info("memory")["used_memory"])
                for start in range(0, count, 100):
                    enqueue.enqueue_many(connection, [request] * min(100, count - start))
                subprocess.run(argv, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, timeout=600)
            used = int(connection.info("memory")["used_memory"]) - before
            out[f"bytes_per_job_{label}{suffix}"] = round(used / jobs)
            if label == "embedded_config" and not suffix:
                out["parts_embedded_config"] = finished_job_parts(connection, jobs + 5)
    for name, value in embedded.items():
        connection.config_set(name, value)
    out["embedded_config"] = embedded
    connection.flushdb()
    return out


def finished_job_parts(connection: Redis, jobs: int) -> dict[str, Any]:
    """What each part of `jobs` finished jobs takes (bytes per job), freed in turn: the result streams, the finished
    registry's members (ZREMRANGEBYRANK: a DEL of a large zset may be freed later, in the background), then the job
    hashes; and the keys that are neither (what every job shares), which should not grow with the jobs."""
    used = lambda: int(connection.info("memory")["used_memory"])  # noqa: E731
    streams, hashes = connection.keys("rq:results:*"), connection.keys("rq:job:*")
    out: dict[str, Any] = {"keys_per_job": round((connection.dbsize()) / jobs, 2)}
    start = used()
    connection.delete(*streams)
    out["result_stream"] = round((start - used()) / jobs)
    start = used()
    connection.zremrangebyrank("rq:finished:low", 0, -1)
    out["finished_entry"] = round((start - used()) / jobs)
    start = used()
    connection.delete(*hashes)
    out["job_hash"] = round((start - used()) / jobs)
    out["other_keys"] = sorted(key.decode() for key in connection.keys("*"))
    return out


def goals(per_job: dict[str, Any] | None, memory: dict[str, Any]) -> list[dict[str, Any]]:
    """Each figure measured with its goal, met or missed."""
    rows: list[tuple[str, Any, int]] = []
    if per_job is not None:
        for name, label in (("ours_worker_nofork", "no-fork job"), ("ours_worker_weighted", "Procfile worker job")):
            worker = per_job[name]
            rows += [
                (f"{label}: Redis commands", worker["commands_per_job"], 20),
                (f"{label}: Redis CPU us", worker["redis_cpu_us_per_job"], 100),
                (f"{label}: round trips", worker["round_trips_per_job"], 6),
            ]
    # The goal is the service's own config (the embedded server's, and the matrix's servers run with it); a managed
    # Redis whose config is fixed gets the server's defaults, printed beside it (docs/redis.md).
    rows.append(("finished job: Redis bytes, embedded_config", memory["bytes_per_job_embedded_config"], 1024))
    return [{"figure": f, "value": v, "goal": f"<= {g}", "met": v <= g} for f, v, g in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--fork-jobs", type=int, default=200)
    parser.add_argument("--scaling-jobs", type=int, default=2000)
    parser.add_argument("--memory-only", action="store_true", help="only the memory per finished job (and its goals)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        folder = Path(data)
        server = EmbeddedRedis(folder / "redis").start()
        connection = Redis.from_url(server.url)
        load = os.getloadavg()[0]
        try:
            limit = per_job = charts_rollup = curve = None
            if not options.memory_only:
                limit = ceiling(server, connection)
                per_job = paths(connection, server.url, options, folder)
                charts_rollup = rollup_costs(connection)
                curve = scaling(connection, server.url, options.scaling_jobs)
            memory = finished_job_memory(connection, server.url, options.jobs)
        finally:
            server.stop()
    print(
        json.dumps(
            {
                "bench": "redis_costs",
                "cores": os.cpu_count(),
                "loadavg_1m_at_start": round(load, 2),
                "redis_server": server.server,
                "ceiling": limit,
                "per_job": per_job,
                "rollup": charts_rollup,
                "scaling": curve,
                "finished_job_memory": memory,
                "goals": goals(per_job, memory),
            }
        )
    )


if __name__ == "__main__":
    main()
