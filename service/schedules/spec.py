"""Schedule specs: what a schedule says (task, trigger, options), validated, and when it is due.

A spec is the body of `PUT /schedules/<id>`, a declared-file entry or the
arguments of `schedule(...)`. `parse_spec` validates it completely (task
registered, lane known, cron and zone valid) before anything is written.
`ScheduleSpec.next_due_after` gives due instants: cron in its zone with the
DST policy, interval as anchor + k * interval (no drift), or the one `at`.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from service.core.errors import InvalidField
from service.core.lanes import check_lane
from service.jobs.schemas import GROUP_PATTERN, Args, Kwargs, Strict, validate
from service.schedules.cron import CronRule, CronSyntaxError, UnknownZone, check_expression, load_zone
from service.tasks.registry import REGISTRY

# Checked on the whole string: `$` would also match before a final newline. Calendar ids are alike.
SCHEDULE_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
MAX_SKIP_CALENDARS = 20
MAX_SKIP_DATES = 1000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TRIGGERS = ("cron", "interval", "at")
# Same range as Redis' and JSON's exact integers of milliseconds is far
# beyond this; the cap keeps arithmetic and croniter inside sane years.
LATEST = datetime(9000, 1, 1, tzinfo=UTC)

# Checking an expression (croniter parses it twice) and building a rule cost ~170 us each; a PUT, its answer
# and the schedules read back name few distinct ones. A rule holds no state between calls: shared safely.
_checked_expression = functools.lru_cache(maxsize=4096)(check_expression)
_cron_rule = functools.lru_cache(maxsize=4096)(CronRule)

Seconds = Annotated[int | float, Field(ge=0, le=366 * 86400)]


def parse_instant(value: str, field: str) -> datetime:
    """Return the ISO 8601 string `value` as an aware UTC datetime; InvalidField if it has no offset."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidField(field, f"{value[:60]!r} is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        raise InvalidField(field, "needs a UTC offset, e.g. 2030-01-01T09:00:00+01:00 or ...Z")
    moment = moment.astimezone(UTC)
    if not EPOCH <= moment < LATEST:
        raise InvalidField(field, "must be between 1970 and 9000")
    return moment


def check_dates(values: list[str]) -> list[str]:
    """Return `values` (dates as YYYY-MM-DD) sorted without repeats; ValueError naming the first bad one."""
    for value in values:
        try:
            if not DATE.fullmatch(value):
                raise ValueError
            date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{str(value)[:40]!r} is not a date as YYYY-MM-DD") from None
    return sorted(set(values))


def isoformat(moment: datetime | None) -> str | None:
    """Return an aware instant as ISO 8601 UTC with a Z suffix, keeping milliseconds only if any."""
    if moment is None:
        return None
    spec = "milliseconds" if moment.microsecond else "seconds"
    return moment.astimezone(UTC).isoformat(timespec=spec).replace("+00:00", "Z")


def to_ms(moment: datetime) -> int:
    return int(round((moment - EPOCH) / timedelta(milliseconds=1)))


def from_ms(ms: int | float) -> datetime:
    return EPOCH + timedelta(milliseconds=int(ms))


def to_us(moment: datetime) -> int:
    """Return an aware instant as whole microseconds since the epoch (exact, unlike to_ms)."""
    return (moment - EPOCH) // timedelta(microseconds=1)


LATEST_MS = to_ms(LATEST)


class ScheduleSpec(Strict):
    """A schedule's definition: a registered task, exactly one trigger, and its options."""

    task: str = Field(min_length=1, max_length=200)
    args: Args = Field(default_factory=list)
    kwargs: Kwargs = Field(default_factory=dict)
    queue: str | None = None
    cron: str | None = Field(default=None, max_length=200)
    timezone: str = Field(default="UTC", max_length=100)
    interval: int | None = Field(default=None, ge=1, le=366 * 86400)
    at: str | None = None
    start_at: str | None = None
    end_at: str | None = None
    repeat: int | None = Field(default=None, ge=1)
    jitter: Seconds = 0
    misfire_grace_time: Seconds | None = None
    coalesce: bool = True
    overlap: Literal["skip", "buffer_one", "allow", "cancel_other"] = "skip"
    paused: bool = False
    description: str = Field(default="", max_length=1000)
    dst_gap: Literal["shift", "skip"] = "shift"
    dst_fold: Literal["first", "both"] = "first"
    pause_on_failure: bool = False
    skip_calendars: list[str] = Field(default_factory=list, max_length=MAX_SKIP_CALENDARS)
    skip_dates: list[str] = Field(default_factory=list, max_length=MAX_SKIP_DATES)
    group: str | None = Field(default=None, pattern=GROUP_PATTERN)  # each run's fair-share group within its lane

    @field_validator("skip_calendars")
    @classmethod
    def _calendars(cls, value: list[str]) -> list[str]:
        bad = next((v for v in value if not SCHEDULE_ID.fullmatch(v)), None)
        if bad is not None:
            raise ValueError(f"{bad[:100]!r} is not a calendar id (1-100 letters, digits, '_' or '-')")
        return sorted(set(value))

    @field_validator("skip_dates")
    @classmethod
    def _dates(cls, value: list[str]) -> list[str]:
        return check_dates(value)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return _checked_expression(value)
        except CronSyntaxError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            load_zone(value)
        except UnknownZone as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("at", "start_at", "end_at")
    @classmethod
    def _instant(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return isoformat(parse_instant(value, "value"))
        except InvalidField as exc:
            raise ValueError(exc.message.removeprefix("value: ")) from None

    @model_validator(mode="after")
    def _one_trigger(self) -> ScheduleSpec:
        given = [name for name in TRIGGERS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"exactly one of cron, interval or at is required, got {', '.join(given) or 'none'}")
        return self

    # -- derived values -------------------------------------------------

    @property
    def start(self) -> datetime | None:
        return parse_instant(self.start_at, "start_at") if self.start_at else None

    @property
    def end(self) -> datetime | None:
        return parse_instant(self.end_at, "end_at") if self.end_at else None

    @property
    def lane(self) -> str:
        return self.queue or REGISTRY.get(self.task).queue

    def cron_rule(self) -> CronRule:
        assert self.cron is not None
        return _cron_rule(self.cron, self.timezone, self.dst_gap, self.dst_fold)

    def next_due_after(self, after: datetime, rule: CronRule | None = None) -> datetime | None:
        """Return the first due instant strictly after `after` within start_at/end_at, or None."""
        start, end = self.start, self.end
        if start is not None and after < start:
            after = start - timedelta(microseconds=1)  # start_at itself may be due
        due = self._raw_next(after, start, rule)
        if due is None or (end is not None and due > end) or due >= LATEST:
            return None
        return due

    def _raw_next(self, after: datetime, start: datetime | None, rule: CronRule | None) -> datetime | None:
        if self.at is not None:
            at = parse_instant(self.at, "at")
            return at if at > after else None
        if self.interval is not None:
            anchor = start or EPOCH  # no start_at: aligned to the epoch, like Temporal
            step = timedelta(seconds=self.interval)
            periods = (after - anchor) // step + 1 if after >= anchor else 0
            return anchor + periods * step
        return (rule or self.cron_rule()).next_after(after)

    def trigger(self) -> tuple[Any, ...]:
        """Return the fields that decide the due times (schedules that share them share DueTimes)."""
        return self.cron, self.timezone, self.interval, self.at, self.start_at, self.end_at, self.dst_gap, self.dst_fold

    def due_times(self, after: datetime, until: datetime, limit: int, skip: SkipDates | None = None) -> list[datetime]:
        """Return up to `limit` due instants in (after, until], in order, leaving out those `skip` names."""
        rule = self.cron_rule() if self.cron else None
        found: list[datetime] = []
        due = self.next_due_after(after, rule)
        while due is not None and due <= until and len(found) < limit:
            if skip is not None and skip(to_ms(due)):  # its whole local day is skipped: go on from the next
                due = self.next_due_after(skip.next_day(due) - timedelta(microseconds=1), rule)
                continue
            found.append(due)
            due = self.next_due_after(due, rule)
        return found


@functools.lru_cache(maxsize=65_536)
def local_date(zone: str, due_ms: int) -> str:
    """Return the date (YYYY-MM-DD) in `zone` of the instant `due_ms` (cached: a burst asks about one instant)."""
    return datetime.fromtimestamp(due_ms / 1000, load_zone(zone)).date().isoformat()


class SkipDates:
    """The dates on which a schedule fires nothing (its calendars' and its own), judged in its time zone."""

    def __init__(self, zone: str, dates: frozenset[str]) -> None:
        self.zone = zone
        self.dates = dates

    def __call__(self, due_ms: int) -> bool:
        return local_date(self.zone, due_ms) in self.dates

    def next_day(self, due: datetime) -> datetime:
        """Return the first instant of the local day after `due`'s (a midnight a DST gap skips: its end)."""
        zone = load_zone(self.zone)
        day = due.astimezone(zone).date() + timedelta(days=1)
        return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


class DueTimes:
    """A trigger's due instants in epoch milliseconds, answering exactly as ScheduleSpec.next_due_after.

    The scheduler asks this for every schedule it fires, so it avoids
    datetimes where it can: an interval is plain integer arithmetic, and a
    cron or one-shot answer is memoized per `after` (a burst of schedules
    sharing a trigger asks the same question thousands of times).
    """

    MEMO_SIZE = 256

    def __init__(self, spec: ScheduleSpec) -> None:
        self.spec = spec
        self.interval_ms = spec.interval * 1000 if spec.interval is not None else None
        self.start_ms = to_ms(spec.start) if spec.start_at else None
        self.end_ms = to_ms(spec.end) if spec.end_at else None
        self.rule = spec.cron_rule() if spec.cron else None
        self._memo: dict[int, int | None] = {}

    def next_after(self, after_ms: int) -> int | None:
        """Return the first due time strictly after `after_ms` within start_at/end_at, or None."""
        step = self.interval_ms
        if step is None:
            return self._next_memoized(after_ms)
        start = self.start_ms
        if start is not None and after_ms < start:
            due = start  # start_at itself may be due
        else:
            anchor = start if start is not None else 0  # no start_at: aligned to the epoch
            due = anchor + ((after_ms - anchor) // step + 1) * step if after_ms >= anchor else anchor
        if (self.end_ms is not None and due > self.end_ms) or due >= LATEST_MS:
            return None
        return due

    def _next_memoized(self, after_ms: int) -> int | None:
        try:
            return self._memo[after_ms]
        except KeyError:
            pass
        if len(self._memo) >= self.MEMO_SIZE:
            self._memo.clear()
        following = self.spec.next_due_after(from_ms(after_ms), self.rule)
        due = self._memo[after_ms] = to_ms(following) if following is not None else None
        return due


def check_schedule_id(schedule_id: object) -> str:
    """Return `schedule_id` if it is 1-100 characters of [A-Za-z0-9_-]; raise InvalidField('id') otherwise."""
    if not isinstance(schedule_id, str) or not SCHEDULE_ID.fullmatch(schedule_id):
        raise InvalidField("id", "must be 1-100 characters of letters, digits, '_' and '-'")
    return schedule_id


def parse_spec(data: Any) -> ScheduleSpec:
    """Return `data` validated as a ScheduleSpec whose task is registered and lane known; InvalidField otherwise."""
    if not isinstance(data, dict):
        raise InvalidField("body", "a schedule must be a JSON object")
    spec = validate(ScheduleSpec, {k: v for k, v in data.items() if k not in ("id",)} if "id" in data else data)
    REGISTRY.public(spec.task)
    if spec.queue is not None:
        check_lane(spec.queue)
    start, end = spec.start, spec.end
    if start is not None and end is not None and end <= start:
        raise InvalidField("end_at", "must be after start_at")
    return spec
