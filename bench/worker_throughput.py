"""Worker benchmark: no-op throughput and enqueue-to-start latency, ours against stock RQ and Celery, in one run.

Prints ONE JSON line. Every variant runs against the same private Redis
(the embedded server, AOF on, as in production) and rounds are interleaved
(A B C A B C ...) so that the machine's noise hits all variants alike; the
figures are medians over rounds, the ratios medians of per-round ratios.

- throughput: N jobs already queued, the worker started in burst mode;
  jobs/s = N / (last ended_at - first started_at), read from the job hashes,
  so process start-up is not counted;
- latency: an idle worker, probes enqueued one at a time 20 ms apart, each
  with its own tool's Python enqueue (ours: service.jobs.enqueue.enqueue, the path
  of the API and CLI; stock RQ: Queue.enqueue_call; Celery: apply_async);
  latency = job started_at - the client's clock just before the enqueue.
  The enqueue call itself is most of it: a cold client spends ~1 ms on it.

Two-process variants: our `--pool 2` and two separate worker processes,
stock `rq worker-pool -n 2 -w rq.SimpleWorker`, and Celery 5 prefork `-c 2`
on the same Redis (bench/celery_app.py: the span is read from the first and
last 50 tasks, which record their own start/end times).

Usage: .venv/bin/python bench/worker_throughput.py [--rounds 3] [--jobs 2000] [--fork-jobs 400] [--probes 100]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis import Redis  # noqa: E402
from rq import Queue  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402

from service.dev.embedded_redis import EmbeddedRedis  # noqa: E402
from service.jobs.enqueue import enqueue as service_enqueue  # noqa: E402
from service.jobs.model import ServiceQueue  # noqa: E402
from service.jobs.schemas import JobRequest  # noqa: E402
from service.tasks.registry import load_task_modules  # noqa: E402

load_task_modules(["service.tasks.diag"])  # diag.echo, our no-op

BIN = Path(sys.executable).parent
OURS = "ours"
STOCK = "stock"
CELERY = "celery"
# variant name -> (kind, command after the interpreter/rq binary, fork-per-job?)
VARIANTS: dict[str, tuple[str, list[str], bool]] = {
    "ours_nofork": (OURS, ["--no-fork"], False),
    "ours_nofork_pool2": (OURS, ["--no-fork", "--pool", "2"], False),
    "ours_nofork_x2": (OURS, ["--no-fork"], False),
    "ours_weighted_nofork": (OURS, ["--no-fork", "--mode", "weighted"], False),
    "ours_fork": (OURS, ["--fork"], True),
    "stock_simple": (STOCK, ["worker", "-w", "rq.SimpleWorker"], False),
    "stock_simple_pool2": (STOCK, ["worker-pool", "-n", "2", "-w", "rq.SimpleWorker"], False),
    "stock_fork": (STOCK, ["worker"], True),
    "celery_prefork2": (CELERY, ["-c", "2", "-P", "prefork"], False),
}
# Variants run as two separate processes of the same command.
TWO_PROCESSES = {"ours_nofork_x2"}
# The lanes each variant's jobs are queued in, the i-th job in lanes[i % len(lanes)]: `low` (the last lane tried),
# and for the Procfile's `worker` line (weighted) every lane, 6:3:1 as its weights share them out.
FILL = {"ours_weighted_nofork": ("high",) * 6 + ("default",) * 3 + ("low",)}
CELERY_MARKS = 50
LANES = ["high", "default", "low"]


def worker_command(name: str, url: str, burst: bool) -> list[str]:
    kind, args, _ = VARIANTS[name]
    if kind == CELERY:
        quiet = ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"]
        return [str(BIN / "celery"), "-A", "bench.celery_app", "worker", *args, *quiet]
    if kind == OURS:
        extra = ["--burst"] if burst else []
        return [sys.executable, str(ROOT / "worker.py"), *LANES, *args, "--no-scheduler", *extra]
    extra = ["--burst"] if burst else []
    return [str(BIN / "rq"), *args, "-u", url, "-S", "json", "-q", *extra, *LANES]


def start(name: str, url: str, burst: bool) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "REDIS_URL": url, "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    return [
        subprocess.Popen(
            worker_command(name, url, burst), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(2 if name in TWO_PROCESSES else 1)
    ]


def stop(processes: list[subprocess.Popen[bytes]], terminate: bool = True) -> None:
    for process in processes:
        if terminate:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def enqueue_noops(connection: Redis, name: str, count: int) -> list[str]:
    """Enqueue `count` no-op jobs into the variant's lanes (FILL; `low` by default: the worst case for a
    multi-lane worker)."""
    ids = []
    lanes = FILL.get(name, ("low",))
    with connection.pipeline() as pipe:
        queues = {lane: make_queue(connection, name, lane) for lane in lanes}
        for i in range(count):
            ids.append(queues[lanes[i % len(lanes)]].enqueue_call(noop_name(name), pipeline=pipe).id)
        pipe.execute()
    return ids


def make_queue(connection: Redis, name: str, lane: str = "low") -> Queue:
    if VARIANTS[name][0] == OURS:
        return ServiceQueue(lane, connection=connection)
    return Queue(lane, connection=connection, serializer=JSONSerializer)


def noop_name(name: str) -> str:
    return "diag.echo" if VARIANTS[name][0] == OURS else "bench.worker_jobs.noop"


def times_of(connection: Redis, ids: list[str]) -> list[tuple[float, float]]:
    with connection.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(f"rq:job:{job_id}", "started_at", "ended_at")
        rows = pipe.execute()
    return [(parse(s), parse(e)) for s, e in rows if s and e]


def parse(value: bytes) -> float:
    return datetime.strptime(value.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def wait(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step timed out")
        time.sleep(0.02)


def throughput(connection: Redis, url: str, name: str, count: int) -> float:
    connection.flushdb()
    if VARIANTS[name][0] == CELERY:
        return celery_throughput(connection, url, name, count)
    ids = enqueue_noops(connection, name, count)
    processes = start(name, url, burst=True)
    wait(lambda: len(times_of(connection, ids[-1:])) == 1, timeout=300)
    wait(lambda: len(times_of(connection, ids)) == count, timeout=60)  # two processes: the other's last job
    stop(processes, terminate=VARIANTS[name][1][0] == "worker-pool")
    spans = times_of(connection, ids)
    assert len(spans) == count, f"{name}: {len(spans)} of {count} jobs ran"
    return count / (max(e for _, e in spans) - min(s for s, _ in spans))


def celery_times(connection: Redis) -> dict[str, float]:
    from bench.celery_app import TIMES_KEY

    return {k.decode(): float(v) for k, v in connection.hgetall(TIMES_KEY).items()}


def celery_publish(marks: list[str | None]) -> None:
    from bench.celery_app import app, noop

    with app.connection_for_write() as conn, app.amqp.Producer(conn) as producer:
        for mark in marks:
            noop.apply_async(args=[mark], producer=producer)


def celery_throughput(connection: Redis, url: str, name: str, count: int) -> float:
    """Celery: `count` tasks queued before the worker starts; first marked start to last marked end."""
    marks = [f"s{n}" if n < CELERY_MARKS else f"e{n}" if n >= count - CELERY_MARKS else None for n in range(count)]
    celery_publish(marks)
    assert connection.llen("celery") == count, connection.llen("celery")
    processes = start(name, url, burst=False)
    wait(lambda: len(celery_times(connection)) == 4 * CELERY_MARKS and connection.llen("celery") == 0, 300)
    stop(processes)
    times = celery_times(connection)
    assert connection.llen("celery") == 0 and not connection.hlen("unacked"), "celery left tasks behind"
    return count / (max(times.values()) - min(times.values()))


def celery_latency(connection: Redis, url: str, name: str, probes: int) -> list[float]:
    processes = start(name, url, burst=False)
    try:
        celery_publish(["warm"])
        wait(lambda: "warm:start" in celery_times(connection), timeout=60)
        samples = []
        for n in range(probes):
            sent = time.time()
            celery_publish([f"p{n}"])
            wait(lambda n=n: f"p{n}:start" in celery_times(connection), timeout=30)
            samples.append((celery_times(connection)[f"p{n}:start"] - sent) * 1000)
            time.sleep(0.02)
    finally:
        stop(processes)
    return samples


def latency(connection: Redis, url: str, name: str, probes: int) -> tuple[float, float]:
    connection.flushdb()
    if VARIANTS[name][0] == CELERY:
        samples = celery_latency(connection, url, name, probes)
        samples.sort()
        return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    processes = start(name, url, burst=False)
    try:
        queue = make_queue(connection, name)
        request = JobRequest(task=noop_name(name), queue="low")
        # Warm up through the probes' own enqueue path (ours builds its job template on first use).
        ours = VARIANTS[name][0] == OURS
        warm = [service_enqueue(connection, request).id] if ours else enqueue_noops(connection, name, 1)
        wait(lambda: len(times_of(connection, warm)) == 1, timeout=60)
        samples = []
        for _ in range(probes):
            sent = time.time()
            if ours:
                job_id = service_enqueue(connection, request).id
            else:
                job_id = queue.enqueue_call(noop_name(name)).id
            wait(lambda j=job_id: len(times_of(connection, [j])) == 1, timeout=30)
            samples.append((times_of(connection, [job_id])[0][0] - sent) * 1000)
            time.sleep(0.02)  # let the worker go idle again
    finally:
        stop(processes)
    samples.sort()
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--fork-jobs", type=int, default=400)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    options = parser.parse_args()
    names = options.variants.split(",")
    results: dict[str, dict[str, list[float]]] = {n: {"jobs_per_s": [], "p50_ms": [], "p99_ms": []} for n in names}
    with tempfile.TemporaryDirectory() as data:
        server = EmbeddedRedis(Path(data)).start()
        os.environ["REDIS_URL"] = server.url  # bench.celery_app's broker
        connection = Redis.from_url(server.url)
        load = os.getloadavg()[0]
        try:
            for _ in range(options.rounds):
                for name in names:
                    count = options.fork_jobs if VARIANTS[name][2] else options.jobs
                    results[name]["jobs_per_s"].append(throughput(connection, server.url, name, count))
                    p50, p99 = latency(connection, server.url, name, options.probes)
                    results[name]["p50_ms"].append(p50)
                    results[name]["p99_ms"].append(p99)
        finally:
            server.stop()
    print(json.dumps(summary(results, options, load)))


def summary(results: dict[str, dict[str, list[float]]], options: Any, load: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "bench": "worker_throughput",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "loadavg_1m_at_start": round(load, 2),
        "rounds": options.rounds,
        "jobs": options.jobs,
        "fork_jobs": options.fork_jobs,
        "probes": options.probes,
    }
    for name, figures in results.items():
        out[name] = {k: round(statistics.median(v), 2) for k, v in figures.items()}

    def ratio(a: str, b: str, key: str, invert: bool = False) -> float | None:
        if a not in results or b not in results:
            return None
        pairs = zip(results[a][key], results[b][key], strict=True)
        return round(statistics.median((y / x) if invert else (x / y) for x, y in pairs), 2)

    out["ratios"] = {
        "nofork_vs_stock_simple_jobs_per_s": ratio("ours_nofork", "stock_simple", "jobs_per_s"),
        "weighted_nofork_vs_stock_simple_jobs_per_s": ratio("ours_weighted_nofork", "stock_simple", "jobs_per_s"),
        "nofork_pool2_vs_stock_simple_pool2_jobs_per_s": ratio("ours_nofork_pool2", "stock_simple_pool2", "jobs_per_s"),
        "nofork_x2_vs_stock_simple_pool2_jobs_per_s": ratio("ours_nofork_x2", "stock_simple_pool2", "jobs_per_s"),
        "nofork_pool2_vs_celery_c2_jobs_per_s": ratio("ours_nofork_pool2", "celery_prefork2", "jobs_per_s"),
        "nofork_x2_vs_celery_c2_jobs_per_s": ratio("ours_nofork_x2", "celery_prefork2", "jobs_per_s"),
        "nofork_pool2_vs_nofork_jobs_per_s": ratio("ours_nofork_pool2", "ours_nofork", "jobs_per_s"),
        "nofork_p50_vs_celery_p50": ratio("ours_nofork", "celery_prefork2", "p50_ms"),
        "fork_vs_stock_fork_jobs_per_s": ratio("ours_fork", "stock_fork", "jobs_per_s"),
        "nofork_p50_vs_stock_simple_p50": ratio("ours_nofork", "stock_simple", "p50_ms"),
        "fork_p50_vs_stock_fork_p50": ratio("ours_fork", "stock_fork", "p50_ms"),
    }
    return out


if __name__ == "__main__":
    main()
