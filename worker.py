"""Worker process: consume the lanes given, in priority order (`python worker.py high default low`)."""

from __future__ import annotations

import logging
import os
import sys

import click

from service.core.lanes import LANES
from service.ops.process import start
from service.workers.claim import parse_weights
from service.workers.prefetch import MAX_PREFETCH
from service.workers.reaper import DEFAULT_CRASH_RETRIES
from service.workers.shutdown import DEFAULT_GRACE_SECONDS
from service.workers.worker import DEFAULT_HEARTBEAT_SECONDS, WorkerOptions, run_worker

log = logging.getLogger("service.worker")


@click.command()
@click.argument("lanes", nargs=-1, type=click.Choice(LANES))
@click.option(
    "--mode",
    type=click.Choice(["strict", "weighted"]),
    default="strict",
    show_default=True,
    help="strict: always the first non-empty lane; weighted: by --weights, so no lane starves.",
)
@click.option(
    "--weights", default="high=6,default=3,low=1", show_default=True, help="Lane weights for --mode weighted."
)
@click.option(
    "--pool",
    "pool_size",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes under this command.",
)
@click.option(
    "--fork/--no-fork",
    default=False,
    show_default=True,
    help="Run each job in a forked work horse (isolation) or in the worker (speed).",
)
@click.option("--burst", is_flag=True, help="Quit once the lanes are empty.")
@click.option("--max-jobs", type=click.IntRange(min=1), default=None, help="Restart the worker after this many jobs.")
@click.option(
    "--max-memory-mb",
    type=click.IntRange(min=1),
    default=None,
    help="Restart the worker when its memory passes this after a job.",
)
@click.option(
    "--grace-seconds",
    type=click.FloatRange(min=0),
    default=DEFAULT_GRACE_SECONDS,
    show_default=True,
    help="On SIGTERM, how long the running job may take before it is requeued.",
)
@click.option(
    "--heartbeat-seconds",
    type=click.FloatRange(min=0.05),
    default=DEFAULT_HEARTBEAT_SECONDS,
    show_default=True,
    help="Heartbeat period; a worker silent for 4 periods is dead.",
)
@click.option(
    "--crash-retries",
    type=click.IntRange(min=0),
    default=DEFAULT_CRASH_RETRIES,
    show_default=True,
    help="Redeliveries of a job whose worker died, before its own retry policy is used.",
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=0, max=MAX_PREFETCH),
    default=MAX_PREFETCH,
    show_default=True,
    help="While jobs are short (no fork, strict order), claim up to this many more per call (0: one at a time).",
)
@click.option(
    "--scheduler/--no-scheduler",
    "with_scheduler",
    default=True,
    show_default=True,
    help="Also move due delayed jobs and retries into their lanes (RQ's scheduler).",
)
@click.option("--name", default=None, help="Worker name (default: a random one).")
def main(
    lanes: tuple[str, ...],
    mode: str,
    weights: str,
    pool_size: int,
    fork: bool,
    burst: bool,
    max_jobs: int | None,
    max_memory_mb: int | None,
    grace_seconds: float,
    heartbeat_seconds: float,
    crash_retries: int,
    prefetch: int,
    with_scheduler: bool,
    name: str | None,
) -> None:
    """Run jobs from LANES (default: high default low), highest priority first."""
    lanes = tuple(dict.fromkeys(lanes)) or LANES
    try:
        lane_weights = parse_weights(weights, lanes) if mode == "weighted" else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--weights") from None
    settings, connection = start("worker")
    options = WorkerOptions(
        lanes=lanes,
        weights=lane_weights,
        fork=fork,
        burst=burst,
        max_jobs=max_jobs,
        max_memory_mb=max_memory_mb,
        grace_seconds=grace_seconds,
        heartbeat_seconds=heartbeat_seconds,
        crash_retries=crash_retries,
        prefetch=prefetch,
        with_scheduler=with_scheduler,
        name=name,
        log_level=settings.log_level,
    )
    if pool_size > 1:
        from service.workers.pool import ServiceWorkerPool

        ServiceWorkerPool(connection, settings.redis_url, options, pool_size).start(
            burst=burst, logging_level=settings.log_level
        )
        return
    connection.close()
    reason = run_worker(settings.redis_url, options)
    if reason and not burst:
        # Restart in place (same PID, so Procfile managers see no exit).
        log.warning("Worker: restarting (%s)", reason)
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, *sys.argv])


if __name__ == "__main__":
    main()
