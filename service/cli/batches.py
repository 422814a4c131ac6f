"""Batch commands: enqueue-batch (many jobs at once, with an on_complete callback) and batch (its tally)."""

from __future__ import annotations

import json
from typing import Any

import click

from service.cli.base import Context, cli, command, echo_json, pass_context
from service.core.errors import InvalidField


def read_jobs(raw: bytes) -> dict[str, Any]:
    """A batch body from SOURCE: a JSON body ({"jobs": [...], "on_complete": ...}) or one job per line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidField("file", "is not UTF-8 text") from None
    try:
        body = json.loads(text)
    except ValueError:  # not one JSON value: JSON lines
        try:
            body = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise InvalidField("file", f"neither JSON lines nor a JSON body ({exc})") from None
    if isinstance(body, dict) and "jobs" in body:
        return body
    return {"jobs": body if isinstance(body, list) else [body]}


def read_on_complete(value: str) -> Any:
    """--on-complete: a JSON object ({"task", "args", "kwargs", "queue"}) or a bare task name."""
    if not value.lstrip().startswith("{"):
        return {"task": value}
    try:
        return json.loads(value)
    except ValueError:
        raise InvalidField("on_complete", "is neither a task name nor a JSON object") from None


@command(cli, "enqueue-batch")
@click.argument("source", type=click.File("rb"))
@click.option("--on-complete", default=None, help="Callback once every job has ended: a task name or a JSON object.")
@pass_context
def enqueue_batch_command(ctx: Context, source: Any, on_complete: str | None) -> None:
    """Enqueue the jobs of SOURCE (a file, or - for stdin: JSON lines, or a JSON body as POST /jobs/batch takes)."""
    from service.jobs import enqueue
    from service.jobs.schemas import BatchRequest, validate

    body = read_jobs(source.read())
    if on_complete is not None:
        body["on_complete"] = read_on_complete(on_complete)
    batch = validate(BatchRequest, body)
    batch_id = None
    if batch.on_complete is None:
        outcomes = enqueue.submit(ctx.connection, list(batch.jobs), batch=True, limits=ctx.limits)
    else:
        outcomes, batch_id = enqueue.submit_batch(ctx.connection, list(batch.jobs), batch.on_complete, ctx.limits)
    echo_json({"jobs": [outcome.describe() for outcome in outcomes], "batch_id": batch_id})


@command(cli, "batch")
@click.argument("batch_id")
@pass_context
def batch_command(ctx: Context, batch_id: str) -> None:
    """Print a batch's tally: total, finished, failed, canceled, pending, on_complete_job_id."""
    from service.jobs.batches import read
    from service.jobs.model import JOB_ID

    if not JOB_ID.fullmatch(batch_id):
        raise InvalidField("batch_id", "1-200 letters, digits, '_' or '-'")
    echo_json(read(ctx.connection, batch_id))
