"""Example tasks drawn from real use: e-mail, reports, health checks, per-user scraping.

They take ids and JSON and are safe to run twice. Replace or extend them by
listing your own modules in TASK_MODULES.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from rq import get_current_job

from service.core.config import Limits
from service.tasks import outbound
from service.tasks.registry import RetryPolicy, task

log = logging.getLogger(__name__)

# Lane per customer tier for the per-user fan-out.
TIER_LANES = {"enterprise": "high", "pro": "default", "free": "low"}


def console_backend(message: dict[str, str]) -> None:
    """Write the e-mail to the log instead of sending it (the default backend)."""
    log.info("email to=%s subject=%s", message["to"], message["subject"])


EMAIL_BACKEND: Callable[[dict[str, str]], None] = console_backend


def set_email_backend(backend: Callable[[dict[str, str]], None]) -> None:
    """Plug in the function that delivers e-mail (SMTP, an API client...)."""
    global EMAIL_BACKEND
    EMAIL_BACKEND = backend


@task("email.send", queue="high", retry=RetryPolicy(max=3, backoff="exponential"))
def send_email(to: str, subject: str, body: str = "") -> dict[str, str]:
    """Send one e-mail through the configured backend."""
    message = {"to": to, "subject": subject, "body": body}
    EMAIL_BACKEND(message)
    return {"to": to, "subject": subject}


@task("reports.generate", queue="low", timeout=600)
def generate_report(report_id: str, period: str | None = None) -> dict[str, Any]:
    """Build a report for `period` (the schedule's logical time when run by a schedule)."""
    job = get_current_job()
    period = period or (job.meta.get("scheduled_for") if job else None) or time.strftime("%Y-%m-%d")
    rows = sum(ord(c) for c in f"{report_id}{period}") % 1000
    return {"report_id": report_id, "period": period, "rows": rows}


@task("http.check", timeout=30, retry=RetryPolicy(max=2, backoff=(5, 30)))
def check_url(url: str, timeout_seconds: float = 5.0) -> dict[str, Any]:
    """GET `url` through the outbound fence; return its status and latency (raise on a 5xx, no answer, refusal)."""
    started = time.monotonic()
    status = outbound.fetch(url, timeout_seconds=float(timeout_seconds)).status
    latency_ms = round((time.monotonic() - started) * 1000, 1)
    if status >= 500:
        raise RuntimeError(f"{url} answered {status}")
    return {"url": url, "status": status, "latency_ms": latency_ms}


@task("scrape.user", queue="default", timeout=300, retry=RetryPolicy(max=3, backoff="exponential"))
def scrape_for_user(user_id: str) -> dict[str, Any]:
    """Scrape one user's sources (a stand-in: records the run and returns a count)."""
    job = get_current_job()
    assert job is not None
    job.connection.hincrby("examples:scrapes", str(user_id), 1)
    return {"user_id": user_id, "items": len(str(user_id)) * 3}


def fanout_within_limit(args: list[Any], kwargs: dict[str, Any], limits: Limits) -> None:
    """Refuse a dispatch to more users than MAX_FANOUT: one request must not become an unbounded burst of jobs."""
    users = kwargs.get("users", args[0] if args else None)
    if isinstance(users, list) and len(users) > limits.fanout:
        raise ValueError(f"users: at most {limits.fanout} per dispatch (MAX_FANOUT), got {len(users)}")


@task("scrape.dispatch", queue="default", check=fanout_within_limit)
def dispatch_scrapes(users: list[dict[str, str]]) -> list[str]:
    """Fan out one scrape.user job per user, in the lane of the user's tier.

    The run's job ids are derived from the dispatcher's own id, so a dispatcher
    that runs twice (a retry, a second scheduler) does not scrape anyone twice.
    """
    from service.jobs.enqueue import enqueue_many
    from service.jobs.schemas import JobRequest

    job = get_current_job()
    assert job is not None
    requests = [
        JobRequest(
            task="scrape.user",
            args=[str(user["id"])],
            queue=TIER_LANES.get(str(user.get("tier")), "default"),
            idempotency_key=f"{job.id}-{user['id']}",
        )
        for user in users
    ]
    return [child.id for child in enqueue_many(job.connection, requests)]
