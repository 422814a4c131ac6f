"""`make run`'s runner: embedded Redis, a printed token, web + worker + scheduler from the Procfile."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import urllib.request
from pathlib import Path

import psutil

from service.dev.embedded_redis import free_port, server_binary
from tests.helpers import wait_until
from tests.processes import Processes


def request(url: str, token: str | None = None, body: dict[str, object] | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def test_run_serves_the_whole_service_and_stops_it_all(
    processes: Processes, process_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    env = {k: v for k, v in process_env.items() if k not in ("REDIS_URL", "API_TOKENS")}
    env.update(PORT=str(port), DATA_DIR=str(tmp_path / "data"))
    processes.env = env
    runner = processes.start("devrun", sys.executable, "-m", "service.dev.run")
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: request(f"{base}/healthz")[0] == 200, timeout=60, what="the web process")
    token = re.search(r"Token:\s+(\S+)", runner.output()).group(1)  # type: ignore[union-attr]
    # Redis 6.2 keeps one appendonly.aof; Redis 7 and Valkey a folder of parts with a manifest.
    assert any((tmp_path / "data" / "redis" / aof).exists() for aof in ("appendonly.aof", "appendonlydir"))

    status, job = request(f"{base}/jobs", token, {"task": "diag.echo", "args": [1]})
    assert status == 202
    done = wait_until(
        lambda: (j := request(f"{base}/jobs/{job['id']}", token)[1]).get("status") == "finished" and j, timeout=20
    )
    assert done["result"] == {"args": [1], "kwargs": {}}
    assert request(f"{base}/jobs/{job['id']}", "wrong-token-0123456789")[0] == 401

    children = psutil.Process(runner.pid).children(recursive=True)
    binary = os.path.realpath(server_binary())
    assert any(c.exe() == binary for c in children)
    runner.signal(signal.SIGINT)
    runner.wait(timeout=30)  # raises if the runner does not exit
    wait_until(lambda: not any(c.is_running() and c.status() != "zombie" for c in children), timeout=20)
