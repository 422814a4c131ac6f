"""`python -m service ...`: the job commands, on a real Redis, with the exit codes a shell user expects."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from redis import Redis
from rq.registry import FailedJobRegistry

from service.cli.main import cli
from service.dev.embedded_redis import free_port
from service.jobs.model import ServiceJob, ServiceQueue
from tests.processes import ROOT


@pytest.fixture
def run(process_env: dict[str, str], connection: Redis):  # type: ignore[no-untyped-def]
    """Invoke the CLI in-process with the test environment; return (exit code, stdout, stderr)."""

    def invoke(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(cli, list(args), env=process_env, catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return invoke


def test_enqueue_prints_the_job_and_reads_arguments_as_json(run, connection: Redis) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run("enqueue", "diag.echo", "1", "two", '{"a": [1]}', "--kwarg", "flag=true", "--queue", "high")
    assert code == 0
    job = json.loads(out)
    assert (job["task"], job["queue"], job["status"]) == ("diag.echo", "high", "queued")
    assert job["args"] == [1, "two", {"a": [1]}] and job["kwargs"] == {"flag": True}
    assert ServiceQueue("high", connection=connection).job_ids == [job["id"]]


def test_enqueue_with_delay_and_retry(run) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run("enqueue", "diag.echo", "--delay", "30", "--retry", "2")
    assert code == 0 and json.loads(out)["status"] == "scheduled"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["enqueue", "os.system", "ls"], "not a registered task"),
        (["enqueue", "diag.echo", "--queue", "urgent"], "not a lane"),
        (["enqueue", "diag.sleep"], "args"),
        (["enqueue", "diag.echo", "--kwarg", "novalue"], "NAME=VALUE"),
        (["enqueue", "diag.echo", "--delay", "-3"], "delay"),
    ],
)
def test_bad_enqueue_exits_2_with_one_line(run, connection: Redis, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run(*args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert connection.dbsize() == 0


def test_job_shows_a_job_and_unknown_ids_exit_1(run) -> None:  # type: ignore[no-untyped-def]
    job = json.loads(run("enqueue", "diag.echo")[1])
    code, out, _ = run("job", job["id"])
    assert code == 0 and json.loads(out)["id"] == job["id"]
    code, _, err = run("job", "nope")
    assert code == 1 and "no job" in err


def test_cancel_then_cancel_again_is_a_conflict(run) -> None:  # type: ignore[no-untyped-def]
    job = json.loads(run("enqueue", "diag.echo")[1])
    code, out, _ = run("cancel", job["id"])
    assert code == 0 and json.loads(out)["status"] == "canceled"
    code, _, err = run("cancel", job["id"])
    assert code == 1 and "canceled" in err


def test_requeue_needs_an_id_or_all_failed(run) -> None:  # type: ignore[no-untyped-def]
    assert run("requeue")[0] == 2
    code, out, _ = run("requeue", "--all-failed")
    assert code == 0 and json.loads(out) == {"requeued": []}


def test_requeue_all_failed_brings_failed_jobs_back(run, connection: Redis) -> None:  # type: ignore[no-untyped-def]
    job = json.loads(run("enqueue", "diag.fail")[1])
    stored = ServiceJob.fetch(job["id"], connection=connection)
    with connection.pipeline() as pipe:
        stored.set_status("failed", pipeline=pipe)
        FailedJobRegistry("default", connection=connection).add(stored, pipeline=pipe)
        pipe.lrem("rq:queue:default", 0, job["id"])
        pipe.execute()
    code, out, _ = run("requeue", "--all-failed")
    assert code == 0 and json.loads(out) == {"requeued": [job["id"]]}
    assert json.loads(run("job", job["id"])[1])["status"] == "queued"


def test_queues_prints_a_table_of_every_lane(run) -> None:  # type: ignore[no-untyped-def]
    run("enqueue", "diag.echo", "--queue", "low")
    code, out, _ = run("queues")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].split()[:3] == ["name", "queued", "started"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"high", "default", "low"} and rows["low"][1] == "1"


def test_tasks_and_workers_print_json(run) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run("tasks")
    assert code == 0 and "diag.echo" in {t["name"] for t in json.loads(out)}
    code, out, _ = run("workers")
    assert code == 0 and json.loads(out) == []


def test_redis_unavailable_exits_3(process_env: dict[str, str]) -> None:
    env = {**process_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result = subprocess.run(
        [sys.executable, "-m", "service", "queues"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 3
    assert result.stderr.startswith("error: Redis unavailable")
