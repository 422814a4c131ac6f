"""The dashboard in a real browser (Debian's chromium, headless, driven by Playwright) against real gunicorn."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from service.dev.embedded_redis import free_port
from tests.conftest import TOKEN
from tests.helpers import wait_until
from tests.processes import Processes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for a sandboxed, offline machine (no background network, no GPU, no first-run UI).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

# `make test` installs chromium as root; CI fails rather than skips (dramatiq's rule: skip on a laptop only).
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"), reason="chromium is not installed (make test installs it as root)"
)


def call(base: str, method: str, path: str, body: object = None) -> dict:
    request = urllib.request.Request(
        base + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_browser_sees_lanes_and_pauses_a_schedule(processes: Processes, tmp_path: Path) -> None:
    port = free_port()
    processes.web(port)
    base = f"http://127.0.0.1:{port}"
    for lane, count in (("high", 2), ("default", 1), ("low", 3)):
        for _ in range(count):
            call(base, "POST", "/jobs", {"task": "diag.echo", "queue": lane})
    call(base, "PUT", "/schedules/nightly", {"task": "diag.echo", "cron": "0 3 * * *", "timezone": "Europe/Vienna"})

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(http_credentials={"username": "ops", "password": TOKEN})
        page = context.new_page()
        page.goto(f"{base}/dashboard/")
        for lane, count in (("high", 2), ("default", 1), ("low", 3)):
            queued = page.locator(f"table#queues a[href$='/jobs/{lane}/queued/8/asc/1']")
            expect(queued).to_have_text(str(count), timeout=15_000)
        page.screenshot(path=str(tmp_path / "queues.png"), full_page=True)

        page.click("text=Schedules")
        expect(page.locator("tr[data-schedule-id=nightly]")).to_contain_text("active")
        page.screenshot(path=str(tmp_path / "schedules.png"), full_page=True)
        page.locator("tr[data-schedule-id=nightly] button[name=pause]").click()
        expect(page.locator("tr[data-schedule-id=nightly]")).to_contain_text("paused")
        page.screenshot(path=str(tmp_path / "paused.png"), full_page=True)
        browser.close()

    assert call(base, "GET", "/schedules/nightly")["paused"] is True
    assert all((tmp_path / name).stat().st_size > 0 for name in ("queues.png", "schedules.png", "paused.png"))


# Runs as script if ever inserted as markup: marks the window and renames the page.
PAYLOAD = "<img src=x onerror=document.title=window.__pwned=1><script>window.__pwned=2</script>"


def wait_for_status(base: str, job_id: str, wanted: str) -> None:
    wait_until(lambda: call(base, "GET", f"/jobs/{job_id}")["status"] == wanted, timeout=30, what=f"{job_id} {wanted}")


def test_job_data_shows_as_text_and_never_runs(processes: Processes) -> None:
    port = free_port()
    processes.web(port)
    processes.worker()
    base = f"http://127.0.0.1:{port}"
    failed = call(base, "POST", "/jobs", {"task": "diag.fail", "kwargs": {"message": PAYLOAD}})["id"]
    finished = call(base, "POST", "/jobs", {"task": "diag.echo", "args": [PAYLOAD]})["id"]
    call(base, "PUT", "/schedules/xss", {"task": "diag.echo", "cron": "0 3 * * *", "description": PAYLOAD})
    run = call(base, "POST", "/schedules/xss/run")["id"]
    for job_id, wanted in ((failed, "failed"), (finished, "finished"), (run, "finished")):
        wait_for_status(base, job_id, wanted)
    running = call(base, "POST", "/jobs", {"task": "testing.hold", "args": [PAYLOAD, 60]})["id"]
    wait_for_status(base, running, "started")
    dashboard = f"{base}/dashboard/0/view"
    pages = [  # (page, an element that shows the payload once the page's data has loaded)
        (f"{dashboard}/job/{failed}", "#job-data pre.exc_info"),
        (f"{dashboard}/job/{finished}", "#job-data pre"),
        (f"{dashboard}/job/{run}", "#job-data .description-scroll"),
        (f"{dashboard}/job/{running}", "#job-data pre.job-progress"),  # testing.hold reports its label
        (f"{dashboard}/jobs/default/failed/8/asc/1", "table#jobs pre.exc_info"),
        (f"{dashboard}/jobs/default/finished/8/asc/1", f"tr[data-job-id='{run}'] .description"),
        (f"{dashboard}/workers", "table#workers"),
        (f"{base}/dashboard/schedules", "tr[data-schedule-id=xss] .description"),
    ]

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(http_credentials={"username": "ops", "password": TOKEN})
        page = context.new_page()
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        for url, shown in pages:
            page.goto(url)
            shown_text = PAYLOAD if "workers" not in url else PAYLOAD[:50]  # the call string is cut at 75 characters
            expect(page.locator(shown).first).to_contain_text(shown_text, timeout=15_000)
            assert page.evaluate("window.__pwned") is None, url
            assert page.title() == "RQ dashboard" and page.locator("img[src=x]").count() == 0, url
        browser.close()

    assert errors == []
    call(base, "POST", f"/jobs/{running}/cancel")
