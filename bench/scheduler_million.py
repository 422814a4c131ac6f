"""A million schedules: Redis memory per schedule, firing lag for a minute's due runs, PUT latency, scheduler RSS.

Prints ONE JSON line (`make bench-million`, a few minutes). One private Redis
(the embedded server, AOF on). 1,000,000 per-user schedules (the user's
number as argument) run every hour, their start times spread over the hour
at whole seconds: every minute has ~16,700 due runs (~280 a second).

- memory: Redis's memory for data (used_memory less the Lua VM's) per
  schedule, stored; and after a run (counters, run state and one run record)
  from the schedules that ran once before the end, their run jobs deleted.
- lag: a real `scheduler.py` fires them; once it has started (its start-up
  scan of the stored schedules done) and fired what fell due while they
  were being created, for every run due in the next whole minute, lag =
  its job's enqueued_at - its due time (p50/p99/max), and none may be
  missing or doubled.
- PUT: a real gunicorn (gunicorn.conf.py, MAX_SCHEDULES raised) takes 2,000
  `PUT /schedules/<id>` replacing users' schedules, one at a time on one
  keep-alive connection, while the scheduler fires: p50/p99/max, timed as a
  load generator such as wrk times them (request written, answer read to its
  Content-Length). As many again with the scheduler stopped (SIGSTOP), in
  alternate rounds of 250: put_ms_scheduler_stopped. Each round again with
  Python's http.client, which parses every answer's headers itself (~0.1 ms
  more a request): put_ms_http_client. `--peer DIR` runs a second gunicorn from another
  checkout (say, the code before a change) on the same Redis, taking turns
  round by round: `peer`, and per-round p50 ratios ours/peer.
  `--gunicorn-args "..."` passes flags to both (say, `--threads 1`).
- RSS: the scheduler process's resident memory after the minute.
- redis_calls_over_1ms_during_puts: what held Redis for a millisecond or more
  (SLOWLOG) while our PUTs ran with the scheduler firing: a command that waits
  behind one waits that long.

`goals` lists issue 17's goals for these figures and whether this run met them.

Usage: .venv/bin/python bench/scheduler_million.py [--schedules 1000000] [--puts 2000] [--peer DIR]
       [--gunicorn-args "..."]
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import shlex
import signal
import socket
import statistics
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

import service.tasks.diag  # noqa: E402, F401 - registers diag.*
from bench.scheduler_burst import used_memory  # noqa: E402
from service.core.clock import server_now  # noqa: E402
from service.core.compat import parse_rq_date  # noqa: E402
from service.core.keys import ScheduleKeys  # noqa: E402
from service.core.lua import SCRIPTS_DIR, script  # noqa: E402
from service.dev.embedded_redis import EmbeddedRedis, free_port, selected_server  # noqa: E402
from service.schedules import operations as schedules  # noqa: E402
from service.schedules.spec import isoformat  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
HOUR = 3600
ROUND = 250  # PUTs per round; the webs and the scheduler's states take turns round by round
STATES = ("firing", "stopped")


def spread(count: int, first_hour: datetime) -> dict[str, dict[str, Any]]:
    """`count` hourly per-user schedules, user n due at second n % 3600 of every hour from `first_hour`."""
    return {
        f"user-{n:07d}": {
            "task": "diag.echo",
            "args": [n],
            "interval": HOUR,
            "start_at": isoformat(first_hour + timedelta(seconds=n % HOUR)),
        }
        for n in range(count)
    }


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p99": round(ordered[int(0.99 * (len(ordered) - 1))], 2),
        "max": round(ordered[-1], 2),
    }


def start(args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def minute_lags(redis: Redis, count: int, first_hour: datetime, minute: datetime) -> tuple[list[float], int]:
    """Lag (ms) of every run due in the minute from `minute`, and how many of them are missing."""
    offset = int((minute - first_hour).total_seconds()) % HOUR
    due_users = [n for n in range(count) if offset <= n % HOUR < offset + 60]
    pipe = redis.pipeline(transaction=False)
    dues = []
    for n in due_users:
        due = minute + timedelta(seconds=(n % HOUR) - offset)
        dues.append(due)
        pipe.hget(f"rq:job:user-{n:07d}-{int(due.timestamp())}", "enqueued_at")
    lags, missing = [], 0
    for due, enqueued in zip(dues, pipe.execute(), strict=True):
        if enqueued is None:
            missing += 1
        else:
            lags.append((parse_rq_date(enqueued) - due).total_seconds() * 1000)
    return lags, missing


def run_growth(redis: Redis, count: int, first_hour: datetime, minute: datetime) -> float:
    """Bytes a schedule's hash grows by with its first run: MEMORY USAGE of the minute's schedules (ran once)
    against as many that were not due yet (never ran); the run jobs themselves are not counted."""
    offset = int((minute - first_hour).total_seconds()) % HOUR
    ran = [n for n in range(count) if offset <= n % HOUR < offset + 60][:500]
    idle = [n for n in range(count) if offset + 600 <= n % HOUR < offset + 660][:500]
    pipe = redis.pipeline(transaction=False)
    for n in ran + idle:
        pipe.memory_usage(f"svc:schedule:user-{n:07d}")
    sizes = pipe.execute()
    return statistics.mean(sizes[: len(ran)]) - statistics.mean(sizes[len(ran) :])


def put_body(n: int) -> bytes:
    return json.dumps({"task": "diag.echo", "args": [n, "v2"], "interval": HOUR}).encode()


def put_latencies(conn: http.client.HTTPConnection, first: int, puts: int, count: int) -> list[float]:
    """Time `puts` PUTs replacing users' schedules (a new argument each) of the `count` stored, one at a time on
    one connection, with Python's http.client (it parses each answer's headers itself: ~0.1 ms a request)."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    times = []
    for n in range(first, first + puts):
        body = put_body(n)
        started = time.perf_counter()
        conn.request("PUT", f"/schedules/user-{n * 7 % count:07d}", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        times.append((time.perf_counter() - started) * 1000)
        assert response.status == 200, response.status
    return times


def lean_latencies(sock: socket.socket, first: int, puts: int, count: int) -> list[float]:
    """The same PUTs as a load generator such as wrk times them: from writing the request to the last byte of
    the answer (its length from Content-Length), nothing parsed but the status line."""
    times = []
    for n in range(first, first + puts):
        body = put_body(n)
        head = (
            f"PUT /schedules/user-{n * 7 % count:07d} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        request, answer = head.encode() + body, b""
        started = time.perf_counter()
        sock.sendall(request)
        while True:
            answer += sock.recv(65536)
            headers, gap, rest = answer.partition(b"\r\n\r\n")
            if gap:
                at = headers.index(b"\r\nContent-Length: ") + 18
                if len(rest) >= int(headers[at : headers.index(b"\r\n", at)]):
                    break
        times.append((time.perf_counter() - started) * 1000)
        assert headers.startswith(b"HTTP/1.1 200 "), headers[:40]
    return times


def put_rounds(
    redis: Redis, scheduler: subprocess.Popen[bytes], ports: dict[str, int], puts: int, count: int
) -> dict[str, Any]:
    """`puts` PUTs per web, client and scheduler state (firing, stopped), in rounds of ROUND taking turns; the
    SLOWLOG of our PUTs while it fires; per-round p50 ratios of each web against ours (lean client)."""
    conns = {name: http.client.HTTPConnection("127.0.0.1", port, timeout=10) for name, port in ports.items()}
    socks = {name: socket.create_connection(("127.0.0.1", port), timeout=10) for name, port in ports.items()}
    for sock in socks.values():
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as http.client sets it
    timers: dict[tuple[str, str], Callable[[int, int, int], list[float]]] = {}
    for name in ports:
        timers[name, "lean"] = functools.partial(lean_latencies, socks[name])
        timers[name, "http.client"] = functools.partial(put_latencies, conns[name])
    cells = [(name, client, state) for name, client in timers for state in STATES]
    times: dict[tuple[str, str, str], list[float]] = {cell: [] for cell in cells}
    ratios: dict[str, list[float]] = {name: [] for name in ports if name != "ours"}
    slow: list[dict[str, Any]] = []
    done = 0
    for round_ in range((puts + ROUND - 1) // ROUND):
        size = min(ROUND, puts - round_ * ROUND)
        for state in STATES if round_ % 2 == 0 else STATES[::-1]:
            scheduler.send_signal(signal.SIGCONT if state == "firing" else signal.SIGSTOP)
            medians = {}
            turns = list(timers) if round_ % 2 == 0 else list(timers)[::-1]
            for name, client in turns:
                redis.slowlog_reset()
                found = timers[name, client](done, size, count)
                medians[name, client] = statistics.median(found)
                done += size
                if (name, client, state) == ("ours", "lean", "firing"):  # the SLOWLOG's own commands aside
                    slow += [e for e in redis.slowlog_get(10_000) if not e["command"].upper().startswith(b"SLOWLOG")]
                times[name, client, state] += found
            for name in ratios:
                ratios[name].append(medians["ours", "lean"] / medians[name, "lean"])
    for closable in (*conns.values(), *socks.values()):
        closable.close()
    return put_figures(times, ratios, slow)


def put_figures(
    times: dict[tuple[str, str, str], list[float]], ratios: dict[str, list[float]], slow: list[dict[str, Any]]
) -> dict[str, Any]:
    """put_rounds' figures: ours with each client and scheduler state, the SLOWLOG, each peer's."""
    out: dict[str, Any] = {"put_ms": percentiles(times["ours", "lean", "firing"])}
    out["put_ms_scheduler_stopped"] = percentiles(times["ours", "lean", "stopped"])
    out["put_ms_http_client"] = {state: percentiles(times["ours", "http.client", state]) for state in STATES}
    out["redis_calls_over_1ms_during_puts"] = slow_calls(slow)
    for name, found in ratios.items():
        out[name] = {state: percentiles(times[name, "lean", state]) for state in STATES}
        out[name]["http.client"] = {state: percentiles(times[name, "http.client", state]) for state in STATES}
        out[name]["p50_ratio_ours_to_it"] = round(statistics.median(found), 3)
    return out


def slow_calls(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """SLOWLOG entries (calls of 1 ms or more): how many, their durations, what they were."""
    names = {}
    for path in SCRIPTS_DIR.glob("*.lua"):
        try:
            names[script(path.stem).sha] = path.stem + ".lua"
        except ValueError:  # a script made with constants (the worker's): none of the schedule path's
            continue
    what: dict[str, int] = {}
    for entry in entries:
        words = entry["command"].split()
        name = names.get(words[1].decode(), "EVALSHA ?") if words[0].upper() == b"EVALSHA" else words[0].decode()
        what[name] = what.get(name, 0) + 1
    found: dict[str, Any] = {"count": len(entries), "by_command": what}
    return {**found, **({"ms": percentiles([e["duration"] / 1000 for e in entries])} if entries else {})}


def wait_steady(redis: Redis) -> datetime:
    """Wait until the scheduler has started and fired what fell due while the schedules were being created
    (nothing in the due set is older than a second); return Redis's time then."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        now = server_now(redis)
        oldest = redis.zrange(ScheduleKeys.due, 0, 0, withscores=True)
        if redis.get(ScheduleKeys.layout) and (not oldest or oldest[0][1] > (now.timestamp() - 1) * 1000):
            return now
        time.sleep(0.2)
    raise RuntimeError("the scheduler did not catch up within 10 minutes")


def wait_for_http(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("gunicorn did not answer")


def measure(
    redis: Redis, url: str, folder: Path, count: int, puts: int, trees: dict[str, Path], flags: list[str]
) -> dict[str, Any]:
    now = server_now(redis)
    first_hour = now.replace(second=0, microsecond=0) - timedelta(hours=1)  # every schedule already in its hours
    before = used_memory(redis)
    started = time.perf_counter()
    schedules.upsert_many(redis, spread(count, first_hour))
    created_s = time.perf_counter() - started
    stored = (used_memory(redis) - before) / count
    env = {**os.environ, "REDIS_URL": url, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING"}
    env.update(API_TOKENS=TOKEN, MAX_SCHEDULES=str(2 * count), WEB_CONCURRENCY="1")
    scheduler = start([sys.executable, "scheduler.py"], env, folder / "scheduler.log")
    ports = {name: free_port() for name in trees}
    command = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", *flags, "service:create_app()"]
    webs = [
        start(command, {**env, "PYTHONPATH": str(tree), "PORT": str(ports[name])}, folder / f"web-{name}.log", tree)
        for name, tree in trees.items()
    ]
    try:
        for port in ports.values():
            wait_for_http(port)
        steady = wait_steady(redis)
        minute = steady.replace(second=0, microsecond=0) + timedelta(minutes=1)
        while server_now(redis) < minute + timedelta(seconds=80):  # the whole minute, and what fires late
            time.sleep(0.5)
        lags, missing = minute_lags(redis, count, first_hour, minute)
        rss = rss_mb(scheduler.pid)
        redis.config_set("slowlog-log-slower-than", 1000)
        redis.config_set("slowlog-max-len", 10_000)
        put = put_rounds(redis, scheduler, ports, puts, count)
    finally:
        scheduler.send_signal(signal.SIGCONT)  # if a round stopped it
        for process in (scheduler, *webs):
            process.terminate()
            process.wait(30)
    queued = redis.lrange("rq:queue:default", 0, -1)
    assert len(queued) == len(set(queued)), "a due time became two jobs"
    ran = int(redis.hget("svc:schedules:stats", "runs") or 0)
    after_run = stored + run_growth(redis, count, first_hour, minute)
    return {
        "schedules": count,
        "create_per_s": round(count / created_s),
        "bytes_per_schedule": round(stored),
        "bytes_per_schedule_after_a_run": round(after_run),
        "schedules_that_ran": ran,
        "minute_runs": len(lags) + missing,
        "minute_missing": missing,
        "lag_ms": percentiles(lags),
        **put,
        "scheduler_rss_mb": rss,
        "redis_used_memory_mb": round(int(redis.info("memory")["used_memory"]) / 2**20),
    }


def goals(figures: dict[str, Any]) -> list[dict[str, Any]]:
    n = f"{figures['schedules']:,}"
    wanted = [
        (f"Redis bytes per stored schedule ({n})", figures["bytes_per_schedule"], "<=", 600),
        (f"Redis bytes per schedule after a run ({n})", figures["bytes_per_schedule_after_a_run"], "<=", 600),
        (f"firing lag p99 for a minute's due runs ({n} stored), ms", figures["lag_ms"]["p99"], "<=", 1000),
        (f"PUT /schedules/<id> p99 ({n} stored), ms", figures["put_ms"]["p99"], "<", 2),
        ("runs of the minute missing", figures["minute_missing"], "<=", 0),
    ]
    return [
        {"figure": name, "value": value, "goal": f"{op} {goal}",
         "met": value <= goal if op == "<=" else value < goal}
        for name, value, op, goal in wanted
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=1_000_000)
    parser.add_argument("--puts", type=int, default=2000)
    parser.add_argument("--peer", type=Path, help="another checkout whose gunicorn takes turns with ours")
    parser.add_argument("--gunicorn-args", default="", help="flags for both gunicorns, say '--threads 1'")
    options = parser.parse_args()
    trees = {"ours": ROOT, **({"peer": options.peer.resolve()} if options.peer else {})}
    loadavg = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        server = EmbeddedRedis(Path(folder) / "redis").start()
        try:
            redis = Redis.from_url(server.url)
            flags = shlex.split(options.gunicorn_args)
            figures = measure(redis, server.url, Path(folder), options.schedules, options.puts, trees, flags)
        finally:
            server.stop()
    out = {"bench": "scheduler_million", "cores": os.cpu_count(), "loadavg_1m_at_start": round(loadavg, 2)}
    out["at"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps({**out, "server": selected_server(), **figures, "goals": goals(figures)}))


if __name__ == "__main__":
    main()
