"""Batches: jobs enqueued together with an `on_complete` job, enqueued exactly once when every job has ended.

A batch is opened in the same transaction that writes its jobs. Its pending
set holds the ids of the jobs that have not ended; every path that stores a
job's end (finished, failed after its retries, canceled or stopped; a
worker, the reaper, the API, the dashboard) calls `end()` in the same
transaction or pipeline that stores it, and the batch script counts the end
once (the set member goes once) and, for the last one, enqueues the
on_complete job in that same step with the tally as its `batch` keyword.
Retries are not ends. The callback itself runs at least once, like any job:
make it idempotent on `batch["id"]`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis import Redis
from rq.serializers import JSONSerializer

from service.core import keys, metrics
from service.core.errors import BatchNotFound
from service.core.lua import script
from service.jobs.damage import is_job_id
from service.jobs.model import new_job_ids
from service.jobs.template import template

BATCH = script("batch")
# A batch whose every job has ended is kept this long (with its tally), like a failed job.
KEEP_SECONDS = 7 * 24 * 3600
ON_COMPLETE_SUFFIX = "-on-complete"
TALLY_MARK = "__batch_tally__"
OUTCOMES = ("finished", "failed", "canceled")


@dataclass
class Batch:
    """A batch about to be opened: its id and what its on_complete job's hash will hold."""

    id: str
    callback: dict[str, Any]  # the callback's hash fields and keys, stored in the batch hash

    @property
    def key(self) -> str:
        return keys.batch_key(self.id)

    @property
    def pending(self) -> str:
        return keys.batch_pending_key(self.id)


def prepare(planned_callback: Any) -> Batch:
    """A new batch whose on_complete job is `planned_callback` (a checked, planned job: service.jobs.writer.Planned).

    The callback's data is stored around a mark where the tally goes (the batch script fills it in).
    """
    batch_id = new_job_ids(1)[0]
    p = planned_callback
    head, _, tail = (
        JSONSerializer.dumps((p.spec.name, None, p.args, {**p.kwargs, "batch": TALLY_MARK}))
        .decode()
        .partition(json.dumps(TALLY_MARK))
    )
    callback_id = batch_id + ON_COMPLETE_SUFFIX
    fields = [*template(p.options, "queued"), *(part for item in p.extra.items() for part in item)]
    callback = {
        "cb_job": callback_id,
        "cb_fields": json.dumps(fields),
        "cb_head": head,
        "cb_tail": tail,
        "cb_lane": keys.queue_key(p.lane),
        "cb_doorbell": keys.doorbell_key(p.lane),
        "cb_key": keys.job_key(callback_id),
        "cb_counter": metrics.field("jobs_enqueued", p.spec.name, p.lane),
        "cb_task": p.spec.name,
    }
    return Batch(batch_id, callback)


def open_batch(client: Any, batch: Batch, members: list[str]) -> None:
    """Queue the batch's opening on `client` (the pipeline or transaction that writes its jobs)."""
    header = {
        "fields": [str(part) for item in {"id": batch.id, "total": len(members), **batch.callback}.items()
                   for part in item],
        "members": members,
        "keep": KEEP_SECONDS,
        "first_job_key": keys.job_key(members[0]) if members else "",
    }  # fmt: skip
    BATCH(keys=_keys(batch.id), args=["open", json.dumps(header)], client=client)


def end(client: Any, job_id: str, batch_id: str | None, outcome: str) -> None:
    """Queue the count of a job's end (finished, failed or canceled) on `client`, if it belongs to a batch.

    Call it in the transaction that stores the end: counted once however often it runs.
    """
    if batch_id:
        BATCH(keys=_keys(batch_id), args=["end", job_id, outcome, KEEP_SECONDS], client=client)


def read(connection: Redis, batch_id: str) -> dict[str, Any]:
    """The batch's tally: id, total, finished, failed, canceled, pending, on_complete_job_id."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.batch_key(batch_id), "total", *OUTCOMES, "on_complete_job_id")
        pipe.scard(keys.batch_pending_key(batch_id))
        replies = pipe.execute(raise_on_error=False)  # a key of another type (planted) reads as no batch
    try:
        (total, *counts, callback_id), pending = replies
        return {
            "id": batch_id,
            "total": _count(total),
            **{outcome: _count(count or b"0") for outcome, count in zip(OUTCOMES, counts, strict=True)},
            "pending": int(pending),
            "on_complete_job_id": callback_id.decode() if callback_id and is_job_id(callback_id.decode()) else None,
        }
    except (TypeError, ValueError):  # absent, or a record the service did not write
        raise BatchNotFound(f"no batch with id {batch_id!r}") from None


def _count(raw: object) -> int:
    """A tally field as the batch script writes it: a whole number of 0 or more."""
    if not isinstance(raw, bytes) or not raw.isdigit() or len(raw) > 18:
        raise ValueError("not a count")
    return int(raw)


def _keys(batch_id: str) -> list[str]:
    return [keys.batch_key(batch_id), keys.batch_pending_key(batch_id), keys.QUEUES_KEY, keys.METRICS_KEY]
