"""Webhook delivery: the internal task that POSTs a failure event to a task's `webhook_url`.

Enqueued by service.ops.hooks when a job with a webhook fails; never from the
API or the CLI.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from service.tasks.registry import RetryPolicy, task

WEBHOOK_TIMEOUT_SECONDS = 5.0


@task("hooks.webhook", queue="low", timeout=30, retry=RetryPolicy(max=3, backoff=(5, 30, 120)), internal=True)
def deliver_webhook(url: str, payload: dict[str, Any]) -> int:
    """POST `payload` as JSON to `url`; raise on a network error or a non-2xx answer (so it is retried)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError("webhook url must start with http:// or https://")
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:  # noqa: S310 - scheme checked
        if not 200 <= response.status < 300:
            raise RuntimeError(f"webhook answered {response.status}")
        return int(response.status)
