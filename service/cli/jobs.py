"""Job, lane, worker and task commands: enqueue, job, cancel, requeue, queues, workers, tasks."""

from __future__ import annotations

from typing import Any

import click

from service.cli.base import Context, cli, command, echo_json, parse_value, pass_context, progress_bar
from service.core.errors import InvalidField
from service.tasks.registry import REGISTRY

WAIT_OPTION = click.option(
    "--wait",
    "wait_seconds",
    type=click.FloatRange(min=0, max=60, min_open=True),
    default=None,
    help="Seconds (up to 60) to wait for the job to end before printing it.",
)


def waited(ctx: Context, job_id: str, seconds: float | None) -> dict[str, Any]:
    """The job as `job ID --wait S` prints it: once it has ended, or after `seconds` as it then is."""
    from service.jobs.describe import describe
    from service.jobs.operations import fetch, wait
    from service.jobs.waits import WaitHub

    if seconds is None:
        return describe(fetch(ctx.connection, job_id))
    return describe(wait(WaitHub(ctx.connection, max_waits=1), ctx.connection, job_id, seconds).value)


@command(cli, "tasks")
@pass_context
def tasks(ctx: Context) -> None:
    """List the registered tasks with their defaults."""
    ctx.load()
    echo_json([spec.to_dict() for spec in REGISTRY.all()])


@command(cli, "enqueue")
@click.argument("task")
@click.argument("args", nargs=-1)
@click.option("--kwarg", "kwargs", multiple=True, metavar="NAME=VALUE", help="A keyword argument (repeatable).")
@click.option("--queue", default=None, help="Lane: high, default or low (default: the task's).")
@click.option("--delay", type=float, default=None, help="Seconds to wait before the job may start.")
@click.option("--retry", "retries", type=int, default=None, help="Retries after a failure (exponential backoff).")
@click.option("--idempotency-key", default=None, help="Return the existing job for a repeated key.")
@click.option("--group", default=None, help="Fair-share group within the lane (e.g. a customer id).")
@WAIT_OPTION
@pass_context
def enqueue_command(
    ctx: Context,
    task: str,
    args: tuple[str, ...],
    kwargs: tuple[str, ...],
    queue: str | None,
    delay: float | None,
    retries: int | None,
    idempotency_key: str | None,
    group: str | None,
    wait_seconds: float | None,
) -> None:
    """Enqueue TASK with ARGS (each read as JSON when it is JSON) and print the job (with --wait, once it ends)."""
    from service.jobs.describe import describe
    from service.jobs.enqueue import enqueue
    from service.jobs.schemas import JobRequest, validate

    pairs = [k.split("=", 1) for k in kwargs]
    if any(len(p) != 2 for p in pairs):
        raise InvalidField("kwarg", "write keyword arguments as NAME=VALUE")
    body: dict[str, Any] = {
        "task": task,
        "args": [parse_value(a) for a in args],
        "kwargs": {k: parse_value(v) for k, v in pairs},
        "queue": queue,
        "delay": delay,
        "idempotency_key": idempotency_key,
        "group": group,
    }
    if retries is not None:
        body["retry"] = {"max": retries}
    request = validate(JobRequest, {k: v for k, v in body.items() if v is not None})
    job = enqueue(ctx.connection, request, limits=ctx.limits)
    echo_json(describe(job) if wait_seconds is None else waited(ctx, job.id, wait_seconds))


@command(cli, "job")
@click.argument("job_id")
@WAIT_OPTION
@pass_context
def job_command(ctx: Context, job_id: str, wait_seconds: float | None) -> None:
    """Print one job (with --wait S, once it has ended or after S seconds)."""
    echo_json(waited(ctx, job_id, wait_seconds))


@command(cli, "cancel")
@click.argument("job_id")
@pass_context
def cancel_command(ctx: Context, job_id: str) -> None:
    """Cancel a queued, scheduled or deferred job, or stop a running one."""
    from service.jobs.describe import describe
    from service.jobs.operations import cancel

    job = cancel(ctx.connection, job_id)
    ctx.audit("job.cancel", job_id)
    echo_json(describe(job))


@command(cli, "requeue")
@click.argument("job_id", required=False)
@click.option("--all-failed", is_flag=True, help="Requeue every failed job of every lane.")
@pass_context
def requeue_command(ctx: Context, job_id: str | None, all_failed: bool) -> None:
    """Requeue a failed job (or --all-failed)."""
    from service.jobs.describe import describe
    from service.jobs.operations import requeue, requeue_all_failed

    if all_failed == bool(job_id):
        raise InvalidField("job_id", "give a job id or --all-failed, not both")
    if all_failed:
        with progress_bar("requeueing failed jobs") as progress:
            requeued = requeue_all_failed(ctx.connection, progress)
        ctx.audit("queue.requeue_failed", "all lanes")
        echo_json({"requeued": requeued})
    else:
        job = requeue(ctx.connection, job_id or "")
        ctx.audit("job.requeue", job.id)
        echo_json(describe(job))


@command(cli, "queues")
@pass_context
def queues_command(ctx: Context) -> None:
    """Show per lane how many jobs are queued, started, scheduled, deferred, failed, finished."""
    from service.ops.monitor import queue_counts

    rows = queue_counts(ctx.connection)
    columns = ["name", "queued", "started", "scheduled", "deferred", "failed", "finished", "canceled", "groups"]
    click.echo("  ".join(f"{c:>9}" for c in columns))
    for row in rows:
        click.echo("  ".join(f"{row[c]!s:>9}" for c in columns))


@command(cli, "workers")
@pass_context
def workers_command(ctx: Context) -> None:
    """List the live workers."""
    from service.ops.monitor import workers

    echo_json(workers(ctx.connection))
