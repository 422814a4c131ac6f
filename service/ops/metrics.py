"""Metrics rendering: the counters kept in Redis, and gauges read at scrape time, in Prometheus text format.

prometheus-client renders the counters of service.core.metrics at scrape
time, together with gauges read from Redis then (service.ops.gauges: queue
depth, oldest job age, live workers).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from redis import Redis

from service.core.keys import METRICS_KEY, ScheduleKeys
from service.core.lanes import LANES
from service.core.metrics import COUNTERS, HISTOGRAMS, LAG_BUCKETS_MS, SEP
from service.ops.gauges import read as read_gauges


class RedisCollector:
    """A prometheus-client collector that reads the service's metrics from Redis on each scrape."""

    def __init__(self, connection: Redis) -> None:
        self.connection = connection

    def collect(self) -> Iterator[Any]:
        raw = {k.decode(): v.decode() for k, v in self.connection.hgetall(METRICS_KEY).items()}
        yield from counters(raw)
        yield from histograms(raw)
        yield from schedule_families(self.connection.hgetall(ScheduleKeys.stats))
        yield from gauges(self.connection)


def counters(raw: dict[str, str]) -> Iterable[CounterMetricFamily]:
    for name, (help_text, labels) in COUNTERS.items():
        family = CounterMetricFamily(name, help_text, labels=list(labels))
        for key, value in raw.items():
            parts = key.split(SEP)
            if parts[0] == name and len(parts) == len(labels) + 1:
                family.add_metric(parts[1:], float(value))
        yield family


def histograms(raw: dict[str, str]) -> Iterable[HistogramMetricFamily]:
    for name, (help_text, labels, bounds) in HISTOGRAMS.items():
        series: dict[tuple[str, ...], dict[str, float]] = defaultdict(dict)
        for key, value in raw.items():
            parts = key.split(SEP)
            if parts[0] == name and len(parts) == len(labels) + 2:
                series[tuple(parts[1:-1])][parts[-1]] = float(value)
        family = HistogramMetricFamily(name, help_text, labels=list(labels))
        for label_values, data in sorted(series.items()):
            total = data.get("count", 0.0)
            buckets = [(str(b), data.get(f"le={b}", 0.0)) for b in bounds] + [("+Inf", total)]
            family.add_metric(list(label_values), buckets, data.get("sum", 0.0))
        yield family


def schedule_families(raw_stats: dict[bytes, bytes]) -> Iterable[Any]:
    """Totals over all schedules (per-schedule counts are in each schedule's JSON) and the lag histogram."""
    stats = {k.decode(): float(v) for k, v in raw_stats.items()}
    for name, help_text, fields in (
        ("schedule_runs", "Runs enqueued by schedules.", ("runs",)),
        ("schedule_missed", "Runs later than their misfire grace, not run.", ("missed",)),
        ("schedule_coalesced", "Missed runs folded into one by coalesce.", ("coalesced",)),
        ("schedule_skipped", "Runs skipped or dropped by an overlap policy.", ("skipped", "dropped")),
    ):
        family = CounterMetricFamily(name, help_text)
        family.add_metric([], sum(stats.get(f, 0.0) for f in fields))
        yield family
    lag = HistogramMetricFamily("scheduler_lag_seconds", "Delay between a run's due time and its enqueue.")
    cumulative, buckets = 0.0, []
    for limit in LAG_BUCKETS_MS:
        cumulative += stats.get(f"lag_ms_bucket_{limit}", 0.0)
        buckets.append((str(limit / 1000), cumulative))
    buckets.append(("+Inf", stats.get("lag_count", 0.0)))
    lag.add_metric([], buckets, stats.get("lag_ms_sum", 0.0) / 1000)
    yield lag


def gauges(connection: Redis) -> Iterable[GaugeMetricFamily]:
    """Queue depth and oldest job age per lane, and live workers, read now."""
    now = read_gauges(connection)
    depth = GaugeMetricFamily("queue_depth", "Jobs waiting in each lane.", labels=["queue"])
    age = GaugeMetricFamily("queue_oldest_job_age_seconds", "Age of the oldest waiting job per lane.", labels=["queue"])
    for lane in LANES:
        depth.add_metric([lane], float(now.depth[lane]))
        age.add_metric([lane], now.oldest_age_seconds[lane])
    workers = GaugeMetricFamily("workers_alive", "Workers registered with a live heartbeat.")
    workers.add_metric([], float(now.workers_alive))
    return [depth, age, workers]


def render(connection: Redis) -> bytes:
    """Return every metric in Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(connection))
    return generate_latest(registry)
