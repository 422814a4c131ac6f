"""HTTP benchmark: POST /jobs and POST /jobs/batch on real gunicorn, against a bare Flask + RQ enqueue app.

Prints ONE JSON line. Both apps run under the same gunicorn settings
(gunicorn.conf.py: WEB_CONCURRENCY gthread workers, WEB_THREADS threads each)
on loopback, against one private Redis (the embedded server, AOF on); wrk
(Debian's package) drives them with -t1 -c4, the variants interleaved round
by round. Ours carries bearer auth and full validation; the bare peer
(bench/bare_app.py) calls `Queue.enqueue_call` / `Queue.enqueue_many` and
nothing else. Every answer must be a 202 and the queue must hold one job per
accepted job (checked). Each case also reports, per queued job, the Redis
commands (`INFO commandstats`) and the CPU time of the gunicorn workers
(/proc), of Redis (`INFO cpu`) and of wrk; `cpu_ratios` compare the total,
which the jobs/s ratio approaches when nothing else shares the cores (on a
shared machine the jobs/s ratio moves with the neighbours' load). Each ratio
is printed with its goal and whether this run met it.

Which gunicorn worker accepts each of wrk's 4 connections is a race: in 40-50 %
of runs one worker takes all 4 and serves them on one core (one GIL), at about
half the jobs/s, for either app. So each round runs each app twice,
for half the round's seconds, in the order ours, bare, bare, ours (the next
round bare first): every run draws its own split, each pair of runs gives a
ratio, and the ratios are the median of 2 per round. `busiest_worker_share`
is the share of the web CPU used by the busiest worker (0.5: even; 1.0: one
worker did everything), and `one_worker_runs` counts runs above 0.9. A
one-second run of each case first warms both apps up (lazy imports, caches,
threads, the script cache) and is not counted.

Usage: .venv/bin/python bench/http_enqueue.py [--rounds 3] [--seconds 4] [--batch 100]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis import Redis  # noqa: E402

from bench.redis_costs import commands, redis_cpu  # noqa: E402
from service.dev.embedded_redis import EmbeddedRedis  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
APPS = {"ours": "service:create_app()", "bare": "bench.bare_app:app"}
# Ratio of our jobs/s to the bare peer's: path -> (name in the output, goal).
CPU_FIGURES = ("cpu_us_per_job", "web_cpu_us_per_job", "redis_cpu_us_per_job", "wrk_cpu_us_per_job")
# A run where one worker used more than this share of the web CPU served (nearly) every connection alone.
ONE_WORKER_SHARE = 0.9
GOALS = {"/jobs": ("jobs_vs_bare_enqueue", 1.25), "/jobs/batch": ("batch_vs_bare_enqueue_many", 3.0)}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
wrk.body = '%s'
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(name: str, url: str, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "REDIS_URL": url, "API_TOKENS": TOKEN, "PORT": str(port), "LOG_LEVEL": "WARNING"}
    env["MAX_QUEUE_LENGTH"] = "100000000"  # a fast batch run queues more than the default lane limit
    env["PYTHONPATH"] = str(ROOT)
    log = open(folder / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", APPS[name]],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            post(base, "/jobs", {"task": "diag.echo", "args": [1]})
            return process, base
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{name} app did not start; see its log") from None
            time.sleep(0.2)


def post(base: str, path: str, body: Any) -> int:
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def wrk(base: str, path: str, body: Any, seconds: int, folder: Path) -> dict[str, float]:
    script = folder / "post.lua"
    script.write_text(WRK_SCRIPT % (TOKEN, json.dumps(body)))
    out = subprocess.run(
        ["wrk", "-t1", "-c4", f"-d{seconds}s", "--latency", "-s", str(script), base + path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors on {base}{path}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {"req_per_s": rps, "p50_ms": latency(out, "50%"), "p99_ms": latency(out, "99%"), "requests": requests}


def settle(connection: Redis) -> int:
    """Wait until the queue stops growing (gunicorn finishes requests wrk gave up on); return its length."""
    length = -1
    while (now := connection.llen("rq:queue:default")) != length:
        length = now
        time.sleep(0.5)
    return length


def verdict(ratio: float, goal: float) -> str:
    return "met" if ratio >= goal else f"missed by {(goal - ratio) / goal:.0%}"


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_case(
    app: tuple[subprocess.Popen[bytes], str],
    path: str,
    body: Any,
    per_request: int,
    connection: Redis,
    seconds: int,
    folder: Path,
) -> dict[str, float]:
    """One wrk run on an empty Redis: its figures, with the CPU per queued job of the web workers, Redis and wrk."""
    settle(connection)  # the previous case's last requests may still be writing
    connection.flushdb()
    connection.config_resetstat()
    workers = [int(pid) for pid in subprocess.check_output(["pgrep", "-P", str(app[0].pid)]).split()]
    per_worker = [process_cpu(pid) for pid in workers]
    before = (sum(per_worker), redis_cpu(connection), children_cpu())
    result = wrk(app[1], path, body, seconds, folder)
    queued = settle(connection)
    # wrk counts the answers it read in time; requests in flight at the end were queued too.
    assert result["requests"] * per_request <= queued <= (result["requests"] + 8) * per_request, (path, queued)
    spent = [process_cpu(pid) - used for pid, used in zip(workers, per_worker, strict=True)]
    result["busiest_worker_share"] = max(spent) / max(sum(spent), 1e-9)
    after = (sum(map(process_cpu, workers)), redis_cpu(connection), children_cpu())
    for part, used in zip(("web", "redis", "wrk"), (b - a for a, b in zip(before, after, strict=True)), strict=True):
        result[f"{part}_cpu_us_per_job"] = used / queued * 1e6
    result["cpu_us_per_job"] = sum(result[f"{part}_cpu_us_per_job"] for part in ("web", "redis", "wrk"))
    result["redis_commands_per_job"] = redis_commands(connection) / queued
    result["jobs_per_s"] = result["req_per_s"] * per_request
    return result


def children_cpu() -> float:
    """CPU seconds used by this script's finished children (the wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def redis_commands(connection: Redis) -> int:
    """Commands Redis ran since CONFIG RESETSTAT, without this script's own (INFO, LLEN, CONFIG)."""
    calls = commands(connection)
    return sum(n for name, n in calls.items() if name not in ("info", "llen", "config|resetstat", "config"))


def latency(out: str, label: str) -> float:
    value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def measure(
    apps: dict[str, tuple[subprocess.Popen[bytes], str]],
    connection: Redis,
    rounds: int,
    run_seconds: int,
    batch_size: int,
    folder: Path,
) -> dict[str, list[dict[str, float]]]:
    """Warm both apps up, then run the rounds: per case ours, bare, bare, ours (bare first every other round)."""
    single = {"task": "diag.echo", "args": [1]}
    bodies = {"/jobs": (single, 1), "/jobs/batch": ({"jobs": [single] * batch_size}, batch_size)}
    for path, (body, per_request) in bodies.items():  # warm-up, not counted
        for app in APPS:
            run_case(apps[app], path, body, per_request, connection, 1, folder)
    figures: dict[str, list[dict[str, float]]] = {f"{app} {path}": [] for path in bodies for app in APPS}
    for number in range(rounds):
        first, second = ("ours", "bare") if number % 2 == 0 else ("bare", "ours")
        for path, (body, per_request) in bodies.items():
            for app in (first, second, second, first):
                result = run_case(apps[app], path, body, per_request, connection, run_seconds, folder)
                figures[f"{app} {path}"].append(result)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4, help="wrk time per app and case in a round (two runs)")
    parser.add_argument("--batch", type=int, default=100)
    options = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    run_seconds = max(1, options.seconds // 2)
    with tempfile.TemporaryDirectory() as data:
        folder = Path(data)
        server = EmbeddedRedis(folder / "redis").start()
        connection = Redis.from_url(server.url)
        load = os.getloadavg()[0]
        apps = {}
        try:
            for app in APPS:
                apps[app] = start_app(app, server.url, folder)
            figures = measure(apps, connection, options.rounds, run_seconds, options.batch, folder)
        finally:
            for process, _ in apps.values():
                process.terminate()
                process.wait(30)
            server.stop()
    out: dict[str, Any] = {
        "bench": "http_enqueue",
        "cores": os.cpu_count(),
        "loadavg_1m_at_start": round(load, 2),
        "rounds": options.rounds,
        "seconds_per_run": run_seconds,
        "batch": options.batch,
        "wrk": "-t1 -c4",
    }
    for name, rounds in figures.items():
        out[name] = {
            k: round(statistics.median(r[k] for r in rounds), 2)
            for k in (
                "req_per_s",
                "jobs_per_s",
                "p50_ms",
                "p99_ms",
                *CPU_FIGURES,
                "redis_commands_per_job",
                "busiest_worker_share",
            )
        }
        out[name]["one_worker_runs"] = (
            f"{sum(r['busiest_worker_share'] > ONE_WORKER_SHARE for r in rounds)} of {len(rounds)}"
        )

    def ratio(path: str, better: Callable[[dict[str, float], dict[str, float]], float]) -> float:
        return round(statistics.median(pair_ratios(path, better)), 2)

    def pair_ratios(path: str, better: Callable[[dict[str, float], dict[str, float]], float]) -> list[float]:
        return [better(o, b) for o, b in zip(figures[f"ours {path}"], figures[f"bare {path}"], strict=True)]

    out["ratios"] = {
        name: ratio(path, lambda o, b: o["jobs_per_s"] / b["jobs_per_s"]) for path, (name, _) in GOALS.items()
    }
    out["pair_ratios"] = {
        name: sorted(round(r, 2) for r in pair_ratios(path, lambda o, b: o["jobs_per_s"] / b["jobs_per_s"]))
        for path, (name, _) in GOALS.items()
    }
    # Bare CPU per job over ours: what the jobs/s ratio tends to when nothing else shares the cores.
    out["cpu_ratios"] = {
        name: ratio(path, lambda o, b: b["cpu_us_per_job"] / o["cpu_us_per_job"]) for path, (name, _) in GOALS.items()
    }
    out["goals"] = {
        name: f">= {goal}x: jobs/s {verdict(out['ratios'][name], goal)}, "
        f"CPU per job {verdict(out['cpu_ratios'][name], goal)}"
        for name, goal in GOALS.values()
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
