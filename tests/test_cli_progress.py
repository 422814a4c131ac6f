"""Long CLI operations draw a progress bar on a terminal and stay quiet in a script or a pipe.

The CLI runs in a subprocess whose standard error is a pseudo-terminal (what a person's shell gives it) or a
pipe (what a script gives it); standard output, the JSON answer, is a pipe in both.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis import Redis
from rq.registry import FailedJobRegistry

from service.core.keys import ScheduleKeys
from service.jobs.enqueue import enqueue
from service.jobs.schemas import JobRequest
from service.schedules import operations as schedules
from service.tasks.registry import load_task_modules
from tests.conftest import TASK_MODULES
from tests.helpers import wait_until
from tests.processes import ROOT, Processes


def run_cli(env: dict[str, str], *args: str, terminal: bool) -> tuple[int, str, str]:
    """Run `python -m service ARGS`; return (exit code, stdout, what standard error showed)."""
    command = [sys.executable, "-m", "service", *args]
    if not terminal:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout, done.stderr
    master, slave = pty.openpty()
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=slave, text=True) as process:
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child exited and the terminal closed
                break
            if not chunk:
                break
            shown += chunk
        out = process.stdout.read() if process.stdout else ""
        code = process.wait(timeout=120)
    os.close(master)
    return code, out, shown.decode(errors="replace")


def declared_file(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "schedules.toml"
    path.write_text("".join(f'[schedules.user-{i:04d}]\ntask = "diag.echo"\ninterval = 3600\n' for i in range(count)))
    return path


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_schedules_sync_shows_a_bar_only_on_a_terminal(
    process_env: dict[str, str], connection: Redis, tmp_path: Path, terminal: bool
) -> None:
    code, out, err = run_cli(process_env, "schedules", "sync", str(declared_file(tmp_path, 300)), terminal=terminal)
    assert code == 0, err
    assert json.loads(out) == {"created": 300, "updated": 0, "removed": 0}
    assert connection.zcard(ScheduleKeys.index) == 300
    if terminal:
        assert "syncing schedules" in err and "300/300" in err and "100%" in err
    else:
        assert err == ""


def test_schedules_sync_removes_what_the_file_no_longer_declares(
    process_env: dict[str, str], connection: Redis, tmp_path: Path
) -> None:
    run_cli(process_env, "schedules", "sync", str(declared_file(tmp_path, 20)), terminal=False)
    code, out, err = run_cli(process_env, "schedules", "sync", str(declared_file(tmp_path, 5)), terminal=True)
    assert code == 0 and json.loads(out) == {"created": 0, "updated": 0, "removed": 15}
    assert "20/20" in err  # 5 declared + 15 looked at for removal
    assert connection.zcard(ScheduleKeys.index) == 5


def test_a_bad_schedules_file_exits_2_and_writes_nothing(
    process_env: dict[str, str], connection: Redis, tmp_path: Path
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[schedules.ok]\ntask = "diag.echo"\ninterval = 60\n[schedules.bad]\ntask = "os.system"\ninterval = 60\n'
    )
    code, out, err = run_cli(process_env, "schedules", "sync", str(path), terminal=False)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: bad.toml: schedule 'bad': ") and "os.system" in err
    assert connection.dbsize() == 0


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_requeue_all_failed_shows_a_bar_only_on_a_terminal(
    process_env: dict[str, str], connection: Redis, processes: Processes, terminal: bool
) -> None:
    load_task_modules(TASK_MODULES)
    for lane in ("high", "default", "low"):
        for _ in range(10):
            enqueue(connection, JobRequest(task="diag.fail", queue=lane))
    processes.worker("--burst")
    failed = [FailedJobRegistry(lane, connection=connection) for lane in ("high", "default", "low")]
    wait_until(lambda: sum(r.count for r in failed) == 30, timeout=60, what="30 failed jobs")

    code, out, err = run_cli(process_env, "requeue", "--all-failed", terminal=terminal)
    assert code == 0 and len(json.loads(out)["requeued"]) == 30
    assert sum(r.count for r in failed) == 0
    if terminal:
        assert "requeueing failed jobs" in err and "30/30" in err
    else:
        assert err == ""


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_backfill_shows_a_bar_only_on_a_terminal(
    process_env: dict[str, str], connection: Redis, terminal: bool
) -> None:
    load_task_modules(TASK_MODULES)
    schedules.upsert(connection, "minutely", {"task": "diag.echo", "interval": 60})
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    begin = end - timedelta(minutes=249)  # 250 due times: three firing calls
    args = ("schedules", "backfill", "minutely", "--from", begin.isoformat(), "--to", end.isoformat())
    code, out, err = run_cli(process_env, *args, terminal=terminal)
    assert code == 0, err
    assert json.loads(out)["created"] == 250
    if terminal:
        assert "backfilling minutely" in err and "250/250" in err
    else:
        assert err == ""
