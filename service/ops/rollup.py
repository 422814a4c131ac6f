"""Rollup: a summary a minute of the counters and gauges, kept 24 h in Redis, for the dashboard's charts.

What already runs writes it: every worker's heartbeat thread and every
scheduler call `Rollup.tick()`, which is a clock check except once a
minute, when it sends one claim (rollup_claim.lua: one process a minute,
minutes only forward). The process that wins reads the metrics hash, the
scheduler's totals and the gauges, and pushes one JSON summary onto a list
capped at RETAIN_MINUTES. The job path sends nothing for it: a summary is
the difference between the counters the job path keeps anyway.

A summary (`t`: epoch seconds) holds per lane, in LANES order: jobs
finished and failed per minute, queue depth, oldest waiting job's age,
enqueue-to-start p50 and p95 (from job_wait_seconds); and the scheduler's
fire lag (mean and p95) and the workers alive. Quantiles are estimated
within their histogram bucket, as Prometheus's histogram_quantile does.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis import Redis

from service.core.keys import METRICS_KEY, ROLLUP_KEY, ROLLUP_MINUTE_KEY, ROLLUP_TOTALS_KEY, ScheduleKeys
from service.core.lanes import LANES
from service.core.lua import script
from service.core.metrics import DURATION_BUCKETS, LAG_BUCKETS_MS, SEP
from service.ops import gauges

log = logging.getLogger("service.rollup")

RETAIN_MINUTES = 24 * 60
KEEP_SECONDS = RETAIN_MINUTES * 60 + 3600  # an idle installation's rollup expires a day after its last write
GAP_SECONDS = 150  # summaries further apart than this were not written in between: the charts show a gap
WAIT_BOUNDS = DURATION_BUCKETS
WAIT_COLUMNS = {**{f"le={bound}": i for i, bound in enumerate(WAIT_BOUNDS)}, "count": len(WAIT_BOUNDS)}
LAG_BOUNDS = tuple(ms / 1000 for ms in LAG_BUCKETS_MS)
SERIES = ("finished", "failed", "depth", "age", "wait_p50", "wait_p95")  # one value per lane
SINGLE = ("lag_mean", "lag_p95", "workers")  # one value


def totals(metrics: dict[str, str], stats: dict[str, str]) -> dict[str, Any]:
    """The counters' running totals a summary is the difference of (per lane in LANES order)."""
    finished, failed = [0.0] * len(LANES), [0.0] * len(LANES)
    wait = [[0.0] * (len(WAIT_BOUNDS) + 1) for _ in LANES]  # cumulative per bound, then the count
    for name, value in metrics.items():
        parts = name.split(SEP)
        if parts[0] in ("jobs_finished", "jobs_failed") and len(parts) == 3 and parts[2] in LANES:
            (finished if parts[0] == "jobs_finished" else failed)[LANES.index(parts[2])] += float(value)
        elif parts[0] == "job_wait_seconds" and len(parts) == 3 and parts[1] in LANES:
            column = WAIT_COLUMNS.get(parts[2])
            if column is not None:
                wait[LANES.index(parts[1])][column] = float(value)
    lag, cumulative = [], 0.0  # the scheduler counts one bucket per run: made cumulative here
    for limit in LAG_BUCKETS_MS:
        cumulative += float(stats.get(f"lag_ms_bucket_{limit}", 0))
        lag.append(cumulative)
    lag.append(float(stats.get("lag_count", 0)))
    return {
        "finished": finished,
        "failed": failed,
        "wait": wait,
        "lag": lag,
        "lag_ms_sum": float(stats.get("lag_ms_sum", 0)),
    }


def quantile(q: float, bounds: Sequence[float], cumulative: Sequence[float]) -> float | None:
    """The q-quantile of a histogram (`cumulative` counts per bound, then the total), interpolated in its bucket."""
    count = cumulative[-1]
    if count <= 0:
        return None
    rank, lower, below = q * count, 0.0, 0.0
    for bound, upto in zip(bounds, cumulative, strict=False):
        if upto >= rank:
            fraction = (rank - below) / (upto - below) if upto > below else 1.0
            return round(lower + (bound - lower) * fraction, 6)
        lower, below = bound, upto
    return bounds[-1]  # beyond the last bound: its value, as histogram_quantile answers


def _delta(now: Sequence[float], before: Sequence[float] | None) -> list[float] | None:
    """Per-item increase; a counter that went down was reset (its new value is the increase), as in Prometheus."""
    if before is None or len(before) != len(now):
        return None
    return [n - b if n >= b else n for n, b in zip(now, before, strict=True)]


def summarize(at: float, now: dict[str, Any], before: dict[str, Any] | None, seen: gauges.Gauges) -> dict[str, Any]:
    """One minute's summary from the totals now and at the previous summary, and the gauges now."""
    elapsed = at - before["t"] if before else 0.0
    usable = before if before and elapsed > 0 else None

    def per_minute(name: str) -> list[float | None]:
        delta = _delta(now[name], usable[name] if usable else None)
        return [round(d * 60 / elapsed, 2) for d in delta] if delta else [None] * len(LANES)

    waits = [_delta(row, usable["wait"][i] if usable else None) for i, row in enumerate(now["wait"])]
    lag = _delta(now["lag"], usable["lag"] if usable else None)
    lag_sum = _delta([now["lag_ms_sum"]], [usable["lag_ms_sum"]] if usable else None)
    return {
        "t": round(at),
        "finished": per_minute("finished"),
        "failed": per_minute("failed"),
        "depth": [seen.depth[lane] for lane in LANES],
        "age": [round(seen.oldest_age_seconds[lane], 1) for lane in LANES],
        "wait_p50": [quantile(0.5, WAIT_BOUNDS, w) if w else None for w in waits],
        "wait_p95": [quantile(0.95, WAIT_BOUNDS, w) if w else None for w in waits],
        "lag_mean": round(lag_sum[0] / lag[-1] / 1000, 6) if lag and lag_sum and lag[-1] > 0 else None,
        "lag_p95": quantile(0.95, LAG_BOUNDS, lag) if lag else None,
        "workers": seen.workers_alive,
    }


def write(connection: Redis, at: float) -> dict[str, Any]:
    """Read the counters and gauges, push this minute's summary (capped, expiring) and the new totals."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.hgetall(METRICS_KEY)
        pipe.hgetall(ScheduleKeys.stats)
        pipe.get(ROLLUP_TOTALS_KEY)
        metrics, stats, stored = pipe.execute()
    now = totals(_text(metrics), _text(stats))
    before = _load(stored)
    summary = summarize(
        at, now, before if isinstance(before, dict) and "t" in before else None, gauges.read(connection)
    )
    with connection.pipeline(transaction=True) as pipe:
        pipe.lpush(ROLLUP_KEY, json.dumps(summary, separators=(",", ":")))
        pipe.ltrim(ROLLUP_KEY, 0, RETAIN_MINUTES - 1)
        pipe.expire(ROLLUP_KEY, KEEP_SECONDS)
        pipe.set(ROLLUP_TOTALS_KEY, json.dumps({**now, "t": at}, separators=(",", ":")), ex=KEEP_SECONDS)
        pipe.execute()
    return summary


def _text(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _load(raw: bytes | None) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None  # not ours (written by hand): start afresh


class Rollup:
    """Writes the summary of each minute no other process has claimed; call `tick()` as often as you like."""

    def __init__(self, connection: Redis, clock: Callable[[], float] = time.time) -> None:
        self.connection = connection
        self.clock = clock
        self._tried = -1  # the last minute this process asked for

    def tick(self) -> bool:
        """Claim and write this minute's summary if no process has; never raises (the charts are not worth a crash)."""
        at = self.clock()
        minute = int(at // 60)
        if minute == self._tried:
            return False
        self._tried = minute
        try:
            if not script("rollup_claim")(
                keys=[ROLLUP_MINUTE_KEY], args=[minute, KEEP_SECONDS], client=self.connection
            ):
                return False
            write(self.connection, at)
            return True
        except Exception as exc:  # Redis down, or a counter in a shape we cannot read: the next minute tries again
            log.warning("rollup of minute %d not written (%s: %s)", minute, type(exc).__name__, exc)
            return False


def series(connection: Redis, minutes: int, now: float | None = None) -> dict[str, Any]:
    """The last `minutes` of summaries as chart columns (oldest first), with a gap (None) where none was written."""
    now = time.time() if now is None else now
    start = now - minutes * 60
    rows = []
    for raw in reversed(connection.lrange(ROLLUP_KEY, 0, minutes)):
        entry = _load(raw)
        if isinstance(entry, dict) and isinstance(entry.get("t"), int | float) and entry["t"] >= start:
            if rows and entry["t"] - rows[-1]["t"] > GAP_SECONDS:
                rows.append({"t": rows[-1]["t"] + 60})  # no summary here: a gap, not a line across it
            rows.append(entry)
    columns: dict[str, Any] = {"lanes": list(LANES), "from": round(start), "to": round(now)}
    columns["t"] = [row["t"] for row in rows]
    for name in SERIES:
        columns[name] = {lane: [_lane_value(row.get(name), i) for row in rows] for i, lane in enumerate(LANES)}
    for name in SINGLE:
        columns[name] = [row.get(name) if isinstance(row.get(name), int | float) else None for row in rows]
    return columns


def _lane_value(values: Any, index: int) -> float | None:
    if isinstance(values, list) and len(values) == len(LANES) and isinstance(values[index], int | float):
        return values[index]
    return None
