"""Soak (`make soak`): the whole service under mixed load and faults for a bounded time.

Real Redis (AOF on, the server REDIS_SERVER selects), gunicorn, two workers,
a scheduler; HTTP enqueues and batches at a steady pace and three schedules
firing every second. Faults, at fractions of the run:
- every minute a worker is restarted (SIGTERM to its group; every other time SIGKILL);
- 0.22 clock jump: the scheduler and worker 0 restart 5 minutes ahead (libfaketime);
- 0.38 full Redis: maxmemory just above used memory (noeviction) for 10 s, then lifted;
- 0.55 Redis outage: stopped for 4 s, restarted from its AOF;
- 0.72 clock jump: worker 0 back on the true clock, worker 1 and the scheduler 5 minutes behind.
Passes when every answer is a 202, except 503 (with Retry-After) while Redis
is full and 503 or no answer during the outage; every acknowledged job ran;
nothing ran twice beyond at-least-once (a SIGKILLed worker's job, or
scheduled run, runs again: at most one re-execution per SIGKILL); no
scheduled run started before its due time by Redis's clock; no schedule fell
silent for more than 30 s; every process is still up; Redis memory (less the
ledgers) is flat once results expire. Prints one JSON line with the figures.
SOAK_SECONDS sets the length (600 by default); SOAK_FAULTS a comma-separated
subset of restarts, clock, full, outage (all by default).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.core.connection import connect  # noqa: E402
from service.dev.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from tests.helpers import wait_until  # noqa: E402
from tests.ledger import ledger  # noqa: E402
from tests.processes import Processes, ServiceProcess  # noqa: E402

TOKEN = "soak-token-0123456789abcdef"
TASK_MODULES = "service.tasks.diag,service.tasks.examples,tests.fixture_tasks"
LANES = ("high", "default", "low")
WORKER_ARGS = ("high", "default", "low", "--mode", "weighted")
RESULT_TTL = 20
JOB_TTL = 120  # a fresh job must not be discarded by a worker whose clock is ahead
# A job whose own write met a full Redis fails; it runs again once the episode is over.
RETRY = {"max": 3, "backoff": [10]}
PACE_SECONDS = 0.05  # 20 requests a second
RESTART_EVERY_SECONDS = 60
OUTAGE_SECONDS = 4
FULL_SECONDS = 10
FULL_MARGIN_BYTES = 64 * 1024
CLOCK_OFFSET_SECONDS = 300
AFTER_FAULT_SECONDS = 10  # answers other than 202 are excused this long after a fault ends
EARLY_TOLERANCE_SECONDS = 1.0
MAX_SILENCE_SECONDS = 30
SCHEDULES = 3
FAULTS = ("restarts", "clock", "full", "outage")


def request(base: str, method: str, path: str, body: object) -> tuple[int, dict, dict]:
    """(status, JSON body, headers); status 0 when no answer came."""
    call = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), method=method,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(call, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read()), dict(exc.headers)
        except ValueError:
            return exc.code, {}, dict(exc.headers)
    except OSError:
        return 0, {}, {}


class Soak:
    """The service, the load on it, and the faults injected on a timeline."""

    def __init__(self, work: Path, duration: float, faults: set[str]) -> None:
        self.duration, self.faults = duration, faults
        self.redis_server = EmbeddedRedis(work / "redis").start()
        self.redis = connect(self.redis_server.url, role="worker")
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "REDIS_URL": self.redis_server.url, "API_TOKENS": TOKEN, "PORT": str(port)}
        env.update(LOG_LEVEL="WARNING", TASK_MODULES=TASK_MODULES)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        self.procs = Processes(env, work)
        gunicorn = ("-m", "gunicorn", "--config", "gunicorn.conf.py", "service:create_app()")
        self.web = self.procs.start("web", sys.executable, *gunicorn)
        self.offsets = [0, 0]  # each worker slot's clock offset, kept across its restarts
        self.workers = [self.start_worker(slot) for slot in range(2)]
        self.scheduler_offset = 0
        self.scheduler = self.start_scheduler()
        self.windows: list[tuple[str, float, float]] = []  # (fault, start, end) on time.monotonic()
        self.figures: Counter[str] = Counter()
        self.failures: list[str] = []
        self.full_lifted_at: float | None = None

    # -- processes ------------------------------------------------------------

    def launch(self, name: str, script: str, offset: int, *args: str) -> ServiceProcess:
        """Start `script`, under libfaketime `offset` seconds off the true clock when not 0."""
        skew = ["faketime", "-f", f"{offset:+d}s"] if offset else []
        return self.procs.start(name, *skew, sys.executable, script, *args)

    def start_worker(self, slot: int) -> ServiceProcess:
        return self.launch(f"worker-{slot}-{len(self.procs.started)}", "worker.py", self.offsets[slot], *WORKER_ARGS)

    def start_scheduler(self) -> ServiceProcess:
        return self.launch(f"scheduler-{len(self.procs.started)}", "scheduler.py", self.scheduler_offset)

    def restart_worker(self, slot: int, sig: int = signal.SIGTERM) -> None:
        self.workers[slot].signal(sig, group=True)
        self.workers[slot].wait(timeout=40)
        self.workers[slot] = self.start_worker(slot)

    # -- faults ----------------------------------------------------------------

    def timeline(self) -> list[tuple[float, Callable[[], None]]]:
        """(seconds from the start, action) in time order, for the faults this soak injects."""
        d, skew = self.duration, CLOCK_OFFSET_SECONDS
        every = RESTART_EVERY_SECONDS
        events = [(float(t), "restarts", self.rotate_worker) for t in range(every, int(d), every)]
        events += [
            (0.22 * d, "clock", lambda: self.jump_clocks(scheduler=skew, slots={0: skew})),
            (0.38 * d, "full", self.fill_redis),
            (0.38 * d + FULL_SECONDS, "full", self.lift_maxmemory),
            (0.55 * d, "outage", self.stop_redis),
            (0.55 * d + OUTAGE_SECONDS, "outage", self.start_redis),
            (0.72 * d, "clock", lambda: self.jump_clocks(scheduler=-skew, slots={0: 0, 1: -skew})),
        ]
        return sorted(((at, action) for at, fault, action in events if fault in self.faults), key=lambda e: e[0])

    def rotate_worker(self) -> None:
        """Restart the next worker: SIGTERM, and every other time SIGKILL (its running job runs again)."""
        n = self.figures["worker_restarts"]
        kill = n % 2 == 1
        self.restart_worker(n % 2, signal.SIGKILL if kill else signal.SIGTERM)
        self.figures["worker_restarts"] += 1
        self.figures["worker_sigkills"] += kill

    def jump_clocks(self, scheduler: int, slots: dict[int, int]) -> None:
        """Restart the scheduler and the given worker slots with these clock offsets (seconds)."""
        self.scheduler.stop()
        self.scheduler_offset = scheduler
        self.scheduler = self.start_scheduler()
        for slot, offset in slots.items():
            self.offsets[slot] = offset
            self.restart_worker(slot)
        self.figures["clock_jumps"] += 1

    def fill_redis(self) -> None:
        used = int(self.redis.info("memory")["used_memory"])
        self.redis.config_set("maxmemory", used + FULL_MARGIN_BYTES)
        self.windows.append(("full", time.monotonic() - 1, float("inf")))

    def lift_maxmemory(self) -> None:
        refused = self.redis.info("errorstats").get("errorstat_OOM", {}).get("count", 0)
        self.figures["full_writes_refused"] += int(refused)  # since Redis started: the outage comes later
        self.redis.config_set("maxmemory", 0)
        self.full_lifted_at = time.monotonic()
        self.close_window("full")
        self.figures["full_redis_episodes"] += 1

    def stop_redis(self) -> None:
        self.redis_server.stop()  # requests go on meanwhile
        self.windows.append(("outage", time.monotonic() - 1, float("inf")))

    def start_redis(self) -> None:
        self.redis_server.start()
        self.close_window("outage")
        self.figures["redis_outages"] += 1

    def close_window(self, fault: str) -> None:
        """End the open window of `fault`, AFTER_FAULT_SECONDS from now."""
        end = time.monotonic() + AFTER_FAULT_SECONDS
        self.windows = [(f, s, end if f == fault and e == float("inf") else e) for f, s, e in self.windows]

    def fault_now(self) -> str | None:
        now = time.monotonic()
        return next((fault for fault, start, end in self.windows if start <= now <= end), None)

    # -- load -------------------------------------------------------------------

    def run(self) -> dict:
        """Load, faults, drain, then the checks; return the figures (failures in self.failures)."""
        up = lambda: request(self.base, "POST", "/jobs", {"task": "diag.echo"})[0] == 202  # noqa: E731
        wait_until(up, timeout=60, what="the web process")
        for n in range(SCHEDULES):
            body = {"task": "testing.tick", "args": [f"ticks-{n}"], "interval": 1}
            status, _, _ = request(self.base, "PUT", f"/schedules/soak-{n}", body)
            assert status in (200, 201), f"PUT /schedules/soak-{n} answered {status}"
        load_from = self.redis_seconds()
        accepted, memory = self.load()
        load_to = self.redis_seconds()
        wait_until(lambda: drained(self.redis), timeout=180, interval=1, what="the lanes to drain")
        report = ledger(self.redis, "soak", accepted)
        ticks = tick_report(self.redis, load_from, load_to)
        time.sleep(RESULT_TTL + 5)  # let results expire before the last memory reading
        figures = {**self.figures, "accepted_jobs": len(accepted), "lost": len(report.missing)}
        figures.update(re_executed=report.duplicates, **ticks, memory_end_bytes=memory_without_ledgers(self.redis))
        self.check(figures, memory)
        figures["memory_samples_bytes"] = memory[-5:]
        return figures

    def load(self) -> tuple[list[str], list[int]]:
        """Enqueue at a steady pace while the faults happen; return the acknowledged values and memory samples."""
        started = time.monotonic()
        events = self.timeline()
        accepted: list[str] = []
        memory: list[int] = []
        next_memory, n = started + 30, 0
        while time.monotonic() - started < self.duration:
            while events and time.monotonic() - started >= events[0][0]:
                events.pop(0)[1]()
            if time.monotonic() >= next_memory and self.fault_now() is None:
                memory.append(memory_without_ledgers(self.redis))
                next_memory = time.monotonic() + 30
            values = [f"v{n}-{i}" for i in range(10 if n % 10 == 0 else 1)]
            if self.send(values, LANES[n % 3]):
                accepted += values
            self.note_recovery()
            n += 1
            time.sleep(PACE_SECONDS)  # the load generator's pace
        for _, event in events:  # a run too short for a fault to end: end it
            if event in (self.lift_maxmemory, self.start_redis):
                event()
        self.figures["requests"] = n
        return accepted, memory

    def send(self, values: list[str], lane: str) -> bool:
        """Enqueue one job per value (a batch when several); True when acknowledged."""
        jobs = [
            {"task": "diag.record", "args": ["soak", v], "queue": lane, "result_ttl": RESULT_TTL, "ttl": JOB_TTL,
             "retry": RETRY}
            for v in values
        ]  # fmt: skip
        body = {"jobs": jobs} if len(jobs) > 1 else jobs[0]
        status, answer, headers = request(self.base, "POST", "/jobs/batch" if len(jobs) > 1 else "/jobs", body)
        self.figures[f"http_{status}"] += 1
        if status in (200, 202):
            return True
        fault = self.fault_now()
        code = answer.get("error", {}).get("code", "-") if isinstance(answer, dict) else "-"
        if fault == "full" and status == 503 and "Retry-After" in headers:
            self.figures[f"full_503_{code}"] += 1
        elif not (fault == "outage" and status in (503, 0)):
            self.figures[f"bad_answer_{status}_{code}_{fault or 'no_fault'}"] += 1
        return False

    def note_recovery(self) -> None:
        """After a full Redis: how long until the lanes were empty again (what was queued meanwhile has run)."""
        if self.full_lifted_at is not None and "full_recovery_seconds" not in self.figures:
            if drained(self.redis):
                self.figures["full_recovery_seconds"] = round(time.monotonic() - self.full_lifted_at, 2)

    def redis_seconds(self) -> float:
        seconds, micros = self.redis.time()
        return seconds + micros / 1e6

    # -- checks -----------------------------------------------------------------

    def check(self, figures: dict, memory: list[int]) -> None:
        bad = {k: v for k, v in figures.items() if k.startswith("bad_answer_")}
        if bad:
            self.failures.append(f"answers outside what a fault excuses: {bad}")
        if figures["lost"]:
            self.failures.append(f"{figures['lost']} acknowledged jobs never ran")
        reruns = figures["re_executed"] + figures["ticks_doubled"]
        if reruns > figures.get("worker_sigkills", 0):
            self.failures.append(f"{reruns} re-executions for {figures.get('worker_sigkills', 0)} SIGKILLed workers")
        if figures["ticks_early"]:
            self.failures.append(f"{figures['ticks_early']} scheduled runs started before their due time")
        if figures["ticks_longest_silence_s"] > MAX_SILENCE_SECONDS:
            self.failures.append(f"a schedule was silent for {figures['ticks_longest_silence_s']} s")
        down = [p.name for p in (self.web, self.scheduler, *self.workers) if not p.alive()]
        if down:
            self.failures.append(f"processes exited: {down}")
        steady = memory[len(memory) // 2 :]
        if steady and figures["memory_end_bytes"] > 1.5 * statistics.median(steady):
            self.failures.append("Redis memory kept growing after results expired")


def tick_report(redis, load_from: float, load_to: float) -> dict:  # type: ignore[no-untyped-def]
    """Scheduled runs (testing.tick): how many, how many early or doubled, the longest silence (Redis's clock)."""
    runs = doubled = early = 0
    silence = 0.0
    for n in range(SCHEDULES):
        ticks = [tuple(map(float, v.split())) for v in redis.lrange(f"diag:ticks-{n}", 0, -1)]
        dues = Counter(due for due, _ in ticks)
        runs += len(dues)
        doubled += sum(count - 1 for count in dues.values())
        early += sum(1 for due, ran in ticks if ran < due - EARLY_TOLERANCE_SECONDS)
        starts = sorted([load_from, *(ran for _, ran in ticks if load_from <= ran <= load_to), load_to])
        silence = max(silence, *(b - a for a, b in zip(starts, starts[1:], strict=False)))
    return {"ticks": runs, "ticks_doubled": doubled, "ticks_early": early, "ticks_longest_silence_s": round(silence, 1)}


def drained(redis) -> bool:  # type: ignore[no-untyped-def]
    """Nothing queued, claimed or waiting for a retry."""
    try:
        lanes = sum(redis.llen(f"rq:queue:{lane}") + redis.zcard(f"rq:scheduled:{lane}") for lane in LANES)
        claimed = sum(redis.llen(k) for k in redis.scan_iter("svc:claimed:*"))
        return lanes == 0 and claimed == 0
    except Exception:
        return False


def memory_without_ledgers(redis) -> int:  # type: ignore[no-untyped-def]
    used = int(redis.info("memory")["used_memory"])
    keys = ["diag:soak", *(f"diag:ticks-{n}" for n in range(SCHEDULES))]
    return used - sum(int(redis.memory_usage(k) or 0) for k in keys)


def main() -> int:
    faults = set(os.environ.get("SOAK_FAULTS", ",".join(FAULTS)).split(","))
    if faults - set(FAULTS):
        print(f"SOAK_FAULTS: choose among {', '.join(FAULTS)}", file=sys.stderr)
        return 2
    if "clock" in faults and shutil.which("faketime") is None:
        print("the soak jumps clocks with libfaketime: apt-get install faketime", file=sys.stderr)
        return 2
    duration = float(os.environ.get("SOAK_SECONDS", "600"))
    soak = Soak(Path(tempfile.mkdtemp(prefix="soak-")), duration, faults)
    try:
        figures = soak.run()
    finally:
        soak.procs.stop_all()
        soak.redis_server.stop()
    print(json.dumps({"soak_seconds": duration, "faults": sorted(faults), **figures, "failures": soak.failures}))
    return 1 if soak.failures else 0


if __name__ == "__main__":
    sys.exit(main())
