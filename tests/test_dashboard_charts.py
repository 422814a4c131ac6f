"""The charts page: data from the per-minute rollup, drawn by uPlot in a real browser, light and dark.

`SCREENSHOTS=docs/img pytest tests/test_dashboard_charts.py` also saves the screenshots the docs show.
"""

from __future__ import annotations

import math
import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from playwright.sync_api import Page, expect, sync_playwright
from redis import Redis

from service.core import metrics
from service.core.keys import WORKERS_KEY, ScheduleKeys, queue_key
from service.dev.embedded_redis import free_port
from service.jobs.enqueue import enqueue_many
from service.jobs.schemas import JobRequest
from service.ops.rollup import Rollup
from service.tasks.registry import load_task_modules
from tests.conftest import TASK_MODULES, TOKEN
from tests.processes import Processes
from tests.test_dashboard import GOOD
from tests.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, call

LANES = ("high", "default", "low")
MINUTES = 90
CHARTS = ("finished", "failed", "depth", "age", "wait", "lag", "workers")
LANE_CHARTS = ("finished", "failed", "depth", "age", "wait")
SCREENSHOTS = os.environ.get("SCREENSHOTS")


def seed_rollup(connection: Redis) -> None:
    """An hour and a half of summaries, written by the real rollup code as the minutes pass (a settable clock)."""
    load_task_modules(TASK_MODULES)
    now = time.time()
    clock = {"now": now - MINUTES * 60}
    writer = Rollup(connection, lambda: clock["now"])
    for minute in range(MINUTES + 1):
        wave = 1 + math.sin(minute / 9)
        with connection.pipeline() as pipe:
            for weight, lane in enumerate(LANES, start=1):
                metrics.count(pipe, "jobs_finished", "diag.echo", lane, amount=int(40 * weight * wave) + 5)
                metrics.count(pipe, "jobs_failed", "diag.fail", lane, amount=int(weight * wave * 1.5))
                for i in range(20):  # enqueue-to-start waits: a few ms, a slow tail for the low lane
                    metrics.observe(pipe, "job_wait_seconds", 0.002 * weight * wave + 0.001 * (i % 5), lane)
                metrics.observe(pipe, "job_wait_seconds", 0.3 * weight * wave, lane)
            pipe.hincrby(ScheduleKeys.stats, "lag_ms_bucket_10", 55)
            pipe.hincrby(ScheduleKeys.stats, "lag_ms_bucket_50", 5 + minute % 3)
            pipe.hincrby(ScheduleKeys.stats, "lag_count", 60 + minute % 3)
            pipe.hincrbyfloat(ScheduleKeys.stats, "lag_ms_sum", 190 + 30 * wave)
            pipe.execute()
        backlog = int(12 * wave * wave)  # depth, as the gauges read it when the summary is written
        connection.delete(*(queue_key(lane) for lane in LANES))
        for weight, lane in enumerate(LANES, start=1):
            if backlog // weight:
                jobs = enqueue_many(connection, [JobRequest(task="diag.echo", queue=lane)] * (backlog // weight))
                waited = datetime.now(UTC) - timedelta(seconds=20 * wave / weight)  # as if it had waited that long
                connection.hset(jobs[0].key, "enqueued_at", waited.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        connection.delete(WORKERS_KEY)
        connection.sadd(WORKERS_KEY, *(f"rq:worker:w{i}" for i in range(2 + minute // 30)))
        clock["now"] = now - (MINUTES - minute) * 60 - 1  # the last hour holds 60 of them until a minute has passed
        assert writer.tick()


def luminance(rgb: tuple[int, ...]) -> float:
    """WCAG relative luminance of an sRGB colour."""
    channels = [c / 255 for c in rgb[:3]]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


# For each chart: each legend entry's label, its marker's colour, and how many canvas pixels have that colour.
DRAWN = """
() => [...document.querySelectorAll('#charts section.chart')].map(section => {
    const canvas = section.querySelector('canvas');
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    const series = [...section.querySelectorAll('.u-legend .u-series')].slice(1).map(row => {
        const color = getComputedStyle(row.querySelector('.u-marker')).borderTopColor.match(/\\d+/g).map(Number);
        let count = 0;
        for (let i = 0; i < pixels.length; i += 4) {
            if (pixels[i + 3] > 200 && Math.abs(pixels[i] - color[0]) < 8 && Math.abs(pixels[i + 1] - color[1]) < 8
                && Math.abs(pixels[i + 2] - color[2]) < 8) { count++; }
        }
        return {label: row.querySelector('.u-label').textContent, color: color, pixels: count};
    });
    return {id: section.id, width: canvas.width, series: series};
})
"""
BACKGROUND = "() => getComputedStyle(document.querySelector('.container')).backgroundColor.match(/\\d+/g).map(Number)"


def open_charts(page: Page, base: str, window: str = "1h") -> list[dict]:
    page.goto(f"{base}/dashboard/charts?window={window}")
    expect(page.locator("#charts")).to_have_attribute("data-points", str(MINUTES + 1 if window == "24h" else 60))
    expect(page.locator("#charts section.chart canvas")).to_have_count(len(CHARTS))
    return page.evaluate(DRAWN)


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="chromium is not installed")
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_charts_are_drawn_with_every_lane_readable_in_light_and_dark(
    processes: Processes, connection: Redis, scheme: str
) -> None:
    seed_rollup(connection)
    port = free_port()
    processes.web(port)
    base = f"http://127.0.0.1:{port}"
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(
            http_credentials={"username": "ops", "password": TOKEN},
            color_scheme=scheme,  # type: ignore[arg-type]
            viewport={"width": 1000, "height": 900},  # wide enough for the navbar (992 px)
        )
        page = context.new_page()
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{base}/dashboard/")
        page.click("text=Charts")
        charts = open_charts(page, base)
        background = tuple(page.evaluate(BACKGROUND))
        if SCREENSHOTS:
            save_screenshots(page, base, Path(SCREENSHOTS), scheme)
        browser.close()

    assert errors == []  # a CSP refusal of any script or style would be a console error
    assert (luminance(background) < 0.05) == (scheme == "dark")
    assert [c["id"] for c in charts] == [f"chart-{name}" for name in CHARTS]
    for chart in charts:
        labels = [s["label"] for s in chart["series"]]
        if chart["id"].removeprefix("chart-") in LANE_CHARTS:
            assert {label.split()[0] for label in labels} == set(LANES), chart["id"]
        for series in chart["series"]:
            assert series["pixels"] > 50, (chart["id"], series)  # its line is on the canvas
            assert contrast(tuple(series["color"]), background) >= 3, (chart["id"], series)  # and readable


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="chromium is not installed")
def test_a_value_between_gaps_is_drawn_as_a_point(processes: Processes, connection: Redis) -> None:
    # A few minutes after `make run`: four summaries, the scheduler's first run counted just before the last.
    connection.sadd(WORKERS_KEY, "rq:worker:w1")
    now = time.time()
    for minute in range(4):
        if minute == 3:
            connection.hset(ScheduleKeys.stats, mapping={"lag_ms_bucket_10": 3, "lag_count": 3, "lag_ms_sum": 6})
        at = now - (3 - minute) * 60
        assert Rollup(connection, lambda at=at: at).tick()
    port = free_port()
    processes.web(port)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(http_credentials={"username": "ops", "password": TOKEN})
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{port}/dashboard/charts")
        expect(page.locator("#charts")).to_have_attribute("data-points", "4")
        drawn = {chart["id"]: chart["series"] for chart in page.evaluate(DRAWN)}
        browser.close()
    assert [series["pixels"] > 10 for series in drawn["chart-lag"]] == [True, True]  # dots: no line to draw on
    assert drawn["chart-workers"][0]["pixels"] > 10


def save_screenshots(page: Page, base: str, folder: Path, scheme: str) -> None:
    """The charts (last hour; light and dark) and the schedules view (light), small PNGs for the docs."""
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"charts-{scheme}.png"), full_page=True)
    if scheme != "light":
        return
    nightly = {"task": "reports.generate", "args": ["sales"], "cron": "0 3 * * *", "timezone": "Europe/Vienna"}
    weekly = {"task": "email.send", "args": ["team@example.com", "digest", "-"], "cron": "0 8 * * 1"}
    call(base, "PUT", "/schedules/nightly-report", nightly)
    call(
        base, "PUT", "/schedules/health-check", {"task": "http.check", "args": ["https://example.com"], "interval": 300}
    )
    call(base, "PUT", "/schedules/weekly-digest", {**weekly, "timezone": "America/New_York"})
    call(base, "POST", "/schedules/health-check/pause", {"note": "endpoint moving"})
    call(base, "POST", "/schedules/nightly-report/run")
    page.set_viewport_size({"width": 1000, "height": 480})  # the page is short: no empty space below it
    page.goto(f"{base}/dashboard/schedules")
    expect(page.locator("tr[data-schedule-id=weekly-digest]")).to_be_visible()
    page.screenshot(path=str(folder / "schedules.png"), full_page=True)


def test_the_24_hour_window_and_the_data_route(client: FlaskClient, connection: Redis) -> None:
    seed_rollup(connection)
    day = client.get("/dashboard/charts/data.json?window=24h", headers=GOOD).get_json()
    hour = client.get("/dashboard/charts/data.json", headers=GOOD).get_json()
    assert len(day["t"]) == MINUTES + 1 and len(hour["t"]) == 60
    assert day["to"] - day["from"] == 24 * 3600 and hour["to"] - hour["from"] == 3600
    assert set(hour["finished"]) == set(LANES) and all(len(v) == 60 for v in hour["wait_p95"].values())
    assert hour["workers"][-1] == 5


@pytest.mark.parametrize("value", ["7d", "", "1h%0A", "%C2%B2", "x" * 10_240])
def test_a_window_other_than_1h_or_24h_is_422_naming_it(client: FlaskClient, value: str) -> None:
    for path in ("/dashboard/charts", "/dashboard/charts/data.json"):
        response = client.get(f"{path}?window={value}", headers=GOOD)
        assert response.status_code == 422, path
        assert response.get_json()["error"]["message"].startswith("window:")


def test_the_charts_page_is_linked_guarded_and_served_with_its_library(client: FlaskClient) -> None:
    assert 'href="/dashboard/charts"' in client.get("/dashboard/schedules", headers=GOOD).get_data(as_text=True)
    assert client.get("/dashboard/charts").status_code == 401
    page = client.get("/dashboard/charts", headers=GOOD)
    assert page.status_code == 200
    inline = re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page.get_data(as_text=True))
    assert len(inline) == 1 and "nonce=" in inline[0]  # only the dashboard's own, allowed by its nonce
    for name in ("uplot/uPlot.iife.min.js", "uplot/uPlot.min.css", "uplot/LICENSE", "charts.js", "charts.css"):
        with client.get(f"/dashboard/charts/static/{name}", headers=GOOD) as asset:
            assert asset.status_code == 200 and "no-store" not in asset.headers.get("Cache-Control", ""), name
        assert client.get(f"/dashboard/charts/static/{name}").status_code == 401
