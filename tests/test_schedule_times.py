"""Due times as pure functions: DST-correct cron in Vienna and New York, drift-free intervals, previews."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import service.tasks.diag  # noqa: F401 - registers diag.*
from service.core.errors import InvalidField
from service.schedules import operations as schedules
from service.schedules.cron import CronRule, CronSyntaxError, check_expression
from service.schedules.spec import DueTimes, parse_spec, to_ms

pytestmark = pytest.mark.matrix


def fires(expression: str, zone: str, start: datetime, count: int, **policy: str) -> list[str]:
    """The next `count` due instants after `start`, as 'UTC | local' strings."""
    rule = CronRule(expression, zone, **policy)
    found, moment = [], start
    for _ in range(count):
        moment = rule.next_after(moment)
        found.append(f"{moment:%m-%d %H:%M}Z | {moment.astimezone(rule.zone):%H:%M%z}")
    return found


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


# Spring forward: Vienna 2026-03-29 02:00 CET -> 03:00 CEST (01:00Z);
#                 New York 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z).
# Fall back: Vienna 2026-10-25 03:00 CEST -> 02:00 CET (01:00Z);
#            New York 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z).


def test_vienna_spring_forward_gap_time_fires_once_at_the_transition() -> None:
    assert fires("30 2 * * *", "Europe/Vienna", utc(2026, 3, 27, 12), 3) == [
        "03-28 01:30Z | 02:30+0100",
        "03-29 01:00Z | 03:00+0200",
        "03-30 00:30Z | 02:30+0200",
    ]


def test_vienna_spring_forward_gap_time_is_skipped_with_dst_gap_skip() -> None:
    assert fires("30 2 * * *", "Europe/Vienna", utc(2026, 3, 27, 12), 2, dst_gap="skip") == [
        "03-28 01:30Z | 02:30+0100",
        "03-30 00:30Z | 02:30+0200",
    ]


def test_several_gap_times_collapse_into_one_run_at_the_transition() -> None:
    assert fires("*/15 2 * * *", "Europe/Vienna", utc(2026, 3, 28, 23), 2) == [
        "03-29 01:00Z | 03:00+0200",
        "03-30 00:00Z | 02:00+0200",
    ]


def test_vienna_fall_back_repeated_time_fires_once_at_the_first_occurrence() -> None:
    assert fires("30 2 * * *", "Europe/Vienna", utc(2026, 10, 24, 12), 2) == [
        "10-25 00:30Z | 02:30+0200",
        "10-26 01:30Z | 02:30+0100",
    ]


def test_vienna_fall_back_repeated_time_fires_twice_with_dst_fold_both() -> None:
    assert fires("30 2 * * *", "Europe/Vienna", utc(2026, 10, 24, 12), 3, dst_fold="both") == [
        "10-25 00:30Z | 02:30+0200",
        "10-25 01:30Z | 02:30+0100",
        "10-26 01:30Z | 02:30+0100",
    ]


def test_new_york_spring_forward_shift_and_skip() -> None:
    assert fires("30 2 * * *", "America/New_York", utc(2026, 3, 7, 12), 2) == [
        "03-08 07:00Z | 03:00-0400",
        "03-09 06:30Z | 02:30-0400",
    ]
    assert fires("30 2 * * *", "America/New_York", utc(2026, 3, 7, 12), 1, dst_gap="skip") == [
        "03-09 06:30Z | 02:30-0400",
    ]


def test_new_york_fall_back_half_hourly_first_and_both() -> None:
    start = utc(2026, 11, 1, 4, 45)  # 00:45 EDT
    assert fires("*/30 * * * *", "America/New_York", start, 4) == [
        "11-01 05:00Z | 01:00-0400",
        "11-01 05:30Z | 01:30-0400",
        "11-01 07:00Z | 02:00-0500",
        "11-01 07:30Z | 02:30-0500",
    ]
    assert fires("*/30 * * * *", "America/New_York", start, 5, dst_fold="both") == [
        "11-01 05:00Z | 01:00-0400",
        "11-01 05:30Z | 01:30-0400",
        "11-01 06:00Z | 01:00-0500",
        "11-01 06:30Z | 01:30-0500",
        "11-01 07:00Z | 02:00-0500",
    ]


def test_new_york_daily_nine_am_follows_the_wall_clock_across_both_changes() -> None:
    spring = fires("0 9 * * *", "America/New_York", utc(2026, 3, 7, 0), 2)
    autumn = fires("0 9 * * *", "America/New_York", utc(2026, 10, 31, 0), 2)
    assert spring == ["03-07 14:00Z | 09:00-0500", "03-08 13:00Z | 09:00-0400"]
    assert autumn == ["10-31 13:00Z | 09:00-0400", "11-01 14:00Z | 09:00-0500"]


def test_cron_is_five_fields_only() -> None:
    assert check_expression(" 0  3 * * 1-5 ") == "0 3 * * 1-5"
    for bad in ("* * * *", "0 0 3 * * *", "61 * * * *", "@daily"):
        with pytest.raises(CronSyntaxError):
            check_expression(bad)


def test_interval_runs_are_start_plus_k_times_interval_over_30_runs() -> None:
    spec = parse_spec({"task": "diag.echo", "interval": 7, "start_at": "2030-01-01T00:00:00.250Z"})
    after = datetime(2030, 1, 1, 0, 0, 3, tzinfo=UTC)
    dues = spec.due_times(after, after + timedelta(days=1), 30)
    start = datetime(2030, 1, 1, 0, 0, 0, 250000, tzinfo=UTC)
    assert dues == [start + k * timedelta(seconds=7) for k in range(1, 31)]
    # Asked late (as a slow scheduler would), the next time is still on the grid.
    late = spec.next_due_after(dues[-1] + timedelta(seconds=5.9))
    assert late == start + 31 * timedelta(seconds=7)


def test_interval_without_start_at_is_aligned_to_the_epoch() -> None:
    spec = parse_spec({"task": "diag.echo", "interval": 60})
    assert spec.next_due_after(utc(2030, 1, 1, 10, 0) + timedelta(seconds=1)) == utc(2030, 1, 1, 10, 1)


def test_start_end_and_one_shot_bounds() -> None:
    spec = parse_spec(
        {"task": "diag.echo", "cron": "0 * * * *", "start_at": "2030-01-01T05:00:00Z", "end_at": "2030-01-01T07:00:00Z"}
    )
    dues = spec.due_times(utc(2029, 1, 1), utc(2031, 1, 1), 10)
    assert dues == [utc(2030, 1, 1, 5), utc(2030, 1, 1, 6), utc(2030, 1, 1, 7)]
    once = parse_spec({"task": "diag.echo", "at": "2030-01-01T09:00:00+01:00"})
    assert once.due_times(utc(2029, 1, 1), utc(2031, 1, 1), 10) == [utc(2030, 1, 1, 8)]


def test_preview_lists_due_times_in_utc_and_in_the_zone_across_a_dst_change() -> None:
    spec = parse_spec({"task": "diag.echo", "cron": "30 2 * * *", "timezone": "Europe/Vienna"})
    result = schedules.preview(spec, 3, now=utc(2026, 3, 27, 12))
    assert result["timezone"] == "Europe/Vienna"
    assert result["times"] == [
        {"utc": "2026-03-28T01:30:00Z", "local": "2026-03-28T02:30:00+01:00"},
        {"utc": "2026-03-29T01:00:00Z", "local": "2026-03-29T03:00:00+02:00"},
        {"utc": "2026-03-30T00:30:00Z", "local": "2026-03-30T02:30:00+02:00"},
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task": "diag.echo"}, "cron, interval or at"),
        ({"task": "diag.echo", "cron": "* * * * *", "interval": 5}, "cron, interval or at"),
        ({"task": "diag.echo", "interval": 0}, "interval"),
        ({"task": "diag.echo", "interval": 1.5}, "interval"),
        ({"task": "diag.echo", "interval": True}, "interval"),
        ({"task": "diag.echo", "cron": "99 * * * *"}, "cron"),
        ({"task": "diag.echo", "cron": "* * * * *", "timezone": "Mars/Olympus"}, "timezone"),
        ({"task": "diag.echo", "at": "2030-01-01T09:00:00"}, "at"),
        ({"task": "os.system", "interval": 5}, "task"),
        ({"task": "diag.echo", "interval": 5, "queue": "urgent"}, "queue"),
        ({"task": "diag.echo", "interval": 5, "overlap": "queue_all"}, "overlap"),
        ({"task": "diag.echo", "interval": 5, "dst_gap": "later"}, "dst_gap"),
        ({"task": "diag.echo", "interval": 5, "misfire_grace_time": -1}, "misfire_grace_time"),
        (
            {"task": "diag.echo", "interval": 5, "start_at": "2030-01-02T00:00Z", "end_at": "2030-01-01T00:00Z"},
            "end_at",
        ),
        ({"task": "diag.echo", "interval": 5, "colour": "red"}, "colour"),
    ],
)
def test_invalid_specs_name_the_field(body: dict, field: str) -> None:
    with pytest.raises(InvalidField) as caught:
        parse_spec(body)
    assert field in caught.value.message


@pytest.mark.parametrize(
    "body",
    [
        {"interval": 7},
        {"interval": 3600, "start_at": "2026-03-01T00:00:00.250Z", "end_at": "2026-03-02T00:00:00Z"},
        {"interval": 90, "end_at": "2026-03-01T00:30:00Z"},
        {"cron": "30 2 * * *", "timezone": "Europe/Vienna"},
        {"cron": "*/30 1-2 * * *", "timezone": "America/New_York", "dst_fold": "both", "dst_gap": "skip"},
        {"cron": "0 9 * * 1-5", "start_at": "2026-03-05T00:00:00Z", "end_at": "2026-04-01T00:00:00Z"},
        {"at": "2026-03-01T12:00:00.500Z"},
    ],
)
def test_millisecond_due_times_agree_with_the_datetime_ones(body: dict) -> None:
    spec = parse_spec({"task": "diag.echo", **body})
    times = DueTimes(spec)
    moment = utc(2026, 2, 28, 23, 59, 59)
    for step in range(200):
        after = moment + timedelta(seconds=997 * step + 0.25 * (step % 4))
        expected = spec.next_due_after(after)
        assert times.next_after(to_ms(after)) == (to_ms(expected) if expected else None), after
        if expected is not None:  # and straight from a due time, as the scheduler asks
            following = spec.next_due_after(expected)
            assert times.next_after(to_ms(expected)) == (to_ms(following) if following else None), expected
