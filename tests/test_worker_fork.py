"""Fork mode: each job in its own work horse, forked by the worker's fork server (service.workers.forkserver)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from redis import Redis
from rq.command import send_stop_job_command

from tests.helpers import wait_until
from tests.processes import Processes
from tests.worker_fixtures import enqueue, start_worker, status


def children_of(pid: int) -> list[int]:
    """The pids of `pid`'s child processes (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def fork_server_of(worker_pid: int) -> int | None:
    """The worker's child that has a child of its own while a job runs: the fork server (parent of the horse)."""
    servers = [pid for pid in children_of(worker_pid) if children_of(pid)]
    return servers[0] if len(servers) == 1 else None


def test_a_job_over_its_timeout_is_killed_and_fails(connection: Redis, processes: Processes) -> None:
    job = enqueue(connection, "diag.sleep", 30, timeout=1)
    after = enqueue(connection, "diag.echo", "next")
    worker = start_worker(processes, "--fork")
    wait_until(lambda: status(job) == "failed", timeout=30, what="the job to time out")
    assert "JobTimeoutException" in (job.latest_result().exc_string or "")
    wait_until(lambda: status(after) == "finished", timeout=20, what="the next job to run")
    assert worker.alive()


def test_a_stop_request_kills_the_horse_and_the_job_reads_stopped(connection: Redis, processes: Processes) -> None:
    job = enqueue(connection, "diag.sleep", 30)
    after = enqueue(connection, "diag.echo", "next")
    worker = start_worker(processes, "--fork")
    wait_until(lambda: status(job) == "started", timeout=20, what="the job to start")
    send_stop_job_command(connection, job.id, serializer=job.serializer)
    wait_until(lambda: status(job) == "stopped", timeout=20, what="the job to stop")
    wait_until(lambda: status(after) == "finished", timeout=20, what="the next job to run")
    assert worker.alive()


def test_a_killed_fork_server_costs_one_redelivery_and_the_worker_carries_on(
    connection: Redis, processes: Processes
) -> None:
    job = enqueue(connection, "workertest.sleep_once", "forkserver", 30)
    after = enqueue(connection, "diag.echo", "next")
    worker = start_worker(processes, "--fork", "--no-scheduler")
    # The task itself has begun (not only the job's status): its first run is on record.
    wait_until(lambda: connection.llen("diag:forkserver") == 1, timeout=20, what="the task to start")
    server = wait_until(lambda: fork_server_of(worker.pid), timeout=10, what="the fork server and its horse")
    os.kill(server, signal.SIGKILL)
    wait_until(lambda: status(job) == "finished", timeout=30, what="the job to run again and finish")
    assert connection.hget(job.key, "crashes") == b"1"
    assert connection.lrange("diag:forkserver", 0, -1) == [b"1", b"1"]  # two starts
    wait_until(lambda: status(after) == "finished", timeout=20, what="the next job to run")
    assert worker.alive()
