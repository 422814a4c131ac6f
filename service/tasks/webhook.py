"""Webhook delivery: the internal task that POSTs a failure event to a task's `webhook_url`.

Enqueued by service.ops.hooks when a job with a webhook fails; never from the
API or the CLI. The call goes through the outbound fence and follows no redirect.
"""

from __future__ import annotations

import json
from typing import Any

from service.tasks import outbound
from service.tasks.registry import RetryPolicy, task

WEBHOOK_TIMEOUT_SECONDS = 5.0


@task("hooks.webhook", queue="low", timeout=30, retry=RetryPolicy(max=3, backoff=(5, 30, 120)), internal=True)
def deliver_webhook(url: str, payload: dict[str, Any]) -> int:
    """POST `payload` as JSON to `url`; raise on a refused address, a network error or a non-2xx answer (retried)."""
    status = outbound.fetch(
        url,
        method="POST",
        body=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        timeout_seconds=WEBHOOK_TIMEOUT_SECONDS,
        max_redirects=0,
    ).status
    if not 200 <= status < 300:
        raise RuntimeError(f"webhook answered {status}")
    return status
