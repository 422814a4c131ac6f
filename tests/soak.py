"""Soak (`make soak`): the whole service under mixed load and faults for a bounded time.

Real Redis (AOF on), gunicorn, two workers, a scheduler; HTTP enqueues and
batches at a steady pace, three schedules firing every second, a worker
restarted every minute (SIGTERM, and every other time SIGKILL), a Redis
outage of a few seconds at mid-run and a full Redis (out of memory) for a few
seconds at three quarters. Passes when no response was a 5xx other
than a 503 inside an outage window, every acknowledged job ran, every process
is still up, and Redis memory (less the ledger itself) is flat once results
expire. Prints one JSON line with the figures. SOAK_SECONDS sets the length
(600 by default).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.core.connection import connect  # noqa: E402
from service.dev.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from tests.helpers import wait_until  # noqa: E402
from tests.ledger import ledger  # noqa: E402
from tests.processes import Processes  # noqa: E402
from tests.redis_full import accept_writes, refuse_writes  # noqa: E402

TOKEN = "soak-token-0123456789abcdef"
RESULT_TTL = 20
PACE_SECONDS = 0.05  # 20 requests a second
OUTAGE_SECONDS = 4
FULL_SECONDS = 4


def post(base: str, path: str, body: object) -> tuple[int, dict]:
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except OSError:
        return 0, {}


def main() -> int:
    duration = float(os.environ.get("SOAK_SECONDS", "600"))
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    redis_server = EmbeddedRedis(work / "redis").start()
    redis = connect(redis_server.url, role="worker")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "REDIS_URL": redis_server.url, "API_TOKENS": TOKEN, "PORT": str(port), "LOG_LEVEL": "WARNING"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    procs = Processes(env, work)
    web = procs.start("web", sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "service:create_app()")
    workers = [procs.worker("high", "default", "low", "--mode", "weighted", name=f"worker-{i}") for i in range(2)]
    scheduler = procs.scheduler()
    failures: list[str] = []
    try:
        wait_until(lambda: post(base, "/jobs", {"task": "diag.echo"})[0] == 202, timeout=60, what="the web process")
        for n in range(3):
            body = {"task": "diag.record", "args": ["ticks", f"s{n}"], "interval": 1}
            request = urllib.request.Request(
                f"{base}/schedules/soak-{n}", data=json.dumps(body).encode(), method="PUT",
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            )  # fmt: skip
            urllib.request.urlopen(request, timeout=10).close()
        stats = run_load(base, redis, redis_server, workers, procs, duration, failures)
        wait_until(lambda: drained(redis), timeout=180, interval=1, what="the lanes to drain")
        report = ledger(redis, "soak", stats.pop("accepted_values"))
        time.sleep(RESULT_TTL + 5)  # let results expire before the last memory reading
        stats["memory_end_bytes"] = memory_without_ledger(redis)
        stats.update(lost=len(report.missing), re_executed=report.duplicates, ticks=redis.llen("diag:ticks"))
        if report.missing:
            failures.append(f"{len(report.missing)} acknowledged jobs never ran")
        down = [p.name for p in (web, scheduler, *workers) if not p.alive()]
        if down:
            failures.append(f"processes exited: {down}")
        steady = stats["memory_samples_bytes"][len(stats["memory_samples_bytes"]) // 2 :]
        if steady and stats["memory_end_bytes"] > 1.5 * statistics.median(steady):
            failures.append("Redis memory kept growing after results expired")
    finally:
        procs.stop_all()
        redis_server.stop()
    stats["memory_samples_bytes"] = stats["memory_samples_bytes"][-5:]
    print(json.dumps({"soak_seconds": duration, **stats, "failures": failures}))
    return 1 if failures else 0


def run_load(base, redis, redis_server, workers, procs, duration, failures) -> dict:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    outage_at = started + duration / 2
    outage_window = (outage_at - 1, outage_at + OUTAGE_SECONDS + 10)
    full_at = started + duration * 3 / 4
    full_window = (full_at - 1, full_at + FULL_SECONDS + 10)
    fulls = 0
    next_restart, restarts, outages = started + 60, 0, 0
    accepted: list[str] = []
    statuses: dict[str, int] = {}
    memory: list[int] = []
    next_memory = started + 30
    n = 0
    while time.monotonic() - started < duration:
        now = time.monotonic()
        in_outage = outage_window[0] <= now <= outage_window[1] or full_window[0] <= now <= full_window[1]
        if outages == 0 and now >= outage_at:
            redis_server.stop()  # the injected outage: requests go on meanwhile
            outages = 1
        elif outages == 1 and now >= outage_at + OUTAGE_SECONDS:
            redis_server.start()
            outages = 2
        fulls = full_episode(redis, fulls, now, full_at)
        if now >= next_restart:
            victim = workers[restarts % len(workers)]
            victim.signal(signal.SIGKILL if restarts % 2 else signal.SIGTERM, group=True)
            victim.wait(timeout=40)
            workers[restarts % len(workers)] = procs.worker(
                "high", "default", "low", "--mode", "weighted", name=f"worker-r{restarts}"
            )
            restarts, next_restart = restarts + 1, now + 60
        if now >= next_memory and not in_outage:
            memory.append(memory_without_ledger(redis))
            next_memory = now + 30
        values = [f"v{n}-{i}" for i in range(10 if n % 10 == 0 else 1)]
        lane = ("high", "default", "low")[n % 3]
        jobs = [{"task": "diag.record", "args": ["soak", v], "queue": lane, "result_ttl": RESULT_TTL} for v in values]
        status, _ = post(base, "/jobs/batch", {"jobs": jobs}) if len(jobs) > 1 else post(base, "/jobs", jobs[0])
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status in (200, 202):
            accepted += values
        elif not (status in (503, 0) and in_outage):
            failures.append(f"HTTP {status} outside an outage window")
        n += 1
        time.sleep(PACE_SECONDS)  # the load generator's pace
    if outages == 1:
        redis_server.start()
    if fulls == 1:
        accept_writes(redis, "oom")
    return {
        "requests": n, "statuses": statuses, "accepted_jobs": len(accepted), "accepted_values": accepted,
        "worker_restarts": restarts, "redis_outages": min(outages, 1), "redis_full_episodes": min(fulls, 1),
        "memory_samples_bytes": memory,
    }  # fmt: skip


def full_episode(redis, fulls: int, now: float, full_at: float) -> int:  # type: ignore[no-untyped-def]
    """The injected full Redis: writes refused (OOM) from `full_at` for FULL_SECONDS; returns the episode's state."""
    if fulls == 0 and now >= full_at:
        refuse_writes(redis, "oom")
        return 1
    if fulls == 1 and now >= full_at + FULL_SECONDS:
        accept_writes(redis, "oom")
        return 2
    return fulls


def drained(redis) -> bool:  # type: ignore[no-untyped-def]
    try:
        lanes = sum(redis.llen(f"rq:queue:{lane}") for lane in ("high", "default", "low"))
        claimed = sum(redis.llen(k) for k in redis.scan_iter("svc:claimed:*"))
        return lanes == 0 and claimed == 0
    except Exception:
        return False


def memory_without_ledger(redis) -> int:  # type: ignore[no-untyped-def]
    used = int(redis.info("memory")["used_memory"])
    ledger_bytes = sum(int(redis.memory_usage(k) or 0) for k in ("diag:soak", "diag:ticks"))
    return used - ledger_bytes


if __name__ == "__main__":
    sys.exit(main())
