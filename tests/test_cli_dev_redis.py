"""`python -m service ...` beside `make run`: with REDIS_URL unset it finds the runner's embedded Redis by
the runner's own rule (DATA_DIR, default `data`, its socket), and says so clearly when there is none."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from service.dev.embedded_redis import EmbeddedRedis, free_port
from tests.helpers import http_ok, wait_until
from tests.processes import ROOT, Processes


def cli(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, in a subprocess (PYTHONPATH: the project, wherever it runs from)."""
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def without_redis_url(process_env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in process_env.items() if k not in ("REDIS_URL", "API_TOKENS", "DATA_DIR")}


def test_the_cli_in_a_second_terminal_reaches_make_runs_redis(
    processes: Processes, process_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**without_redis_url(process_env), "DATA_DIR": str(tmp_path / "data")}
    port = free_port()
    processes.env = {**env, "PORT": str(port)}
    processes.start("devrun", sys.executable, "-m", "service.dev.run")
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=60, what="make run's web process")

    enqueued = cli(env, "enqueue", "diag.echo", "1")
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = json.loads(enqueued.stdout)["id"]

    def finished() -> bool:
        shown = cli(env, "job", job_id)
        return shown.returncode == 0 and json.loads(shown.stdout)["status"] == "finished"

    wait_until(finished, timeout=30, what="make run's worker to run the CLI's job")


def test_the_default_data_folder_is_data_where_the_cli_runs(process_env: dict[str, str], tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "data" / "redis", use_socket=True).start()
    try:
        shown = cli(without_redis_url(process_env), "queues", cwd=tmp_path)
    finally:
        server.stop()
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split()[:2] == ["name", "queued"]


def test_without_redis_url_or_a_running_make_run_the_cli_exits_2_naming_redis_url(
    process_env: dict[str, str], tmp_path: Path
) -> None:
    stale = tmp_path / "data" / "redis"
    EmbeddedRedis(stale, use_socket=True).start().kill()  # a socket file left behind by a killed run
    assert (stale / "redis.sock").is_socket()
    for folder in (tmp_path, tmp_path / "data"):  # a stale socket; no data folder at all
        failed = cli(without_redis_url(process_env), "queues", cwd=folder)
        assert failed.returncode == 2 and failed.stdout == ""
        assert failed.stderr.startswith("error: configuration error: REDIS_URL: not set")
        assert "data/redis/redis.sock" in failed.stderr and failed.stderr.count("\n") == 1
