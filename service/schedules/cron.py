"""Cron: five-field cron expressions evaluated as wall-clock time in an IANA zone, DST included.

croniter walks naive wall-clock times; this module maps each wall time to
the instants it names in the zone and applies the DST policy:

- a wall time skipped by a spring-forward gap fires once at the transition
  (`dst_gap="shift"`, the default) or not at all (`"skip"`);
- a wall time repeated by a fall-back fold fires at its first occurrence
  (`dst_fold="first"`, the default) or at both (`"both"`).

Everything returned is an aware UTC datetime; the process's TZ never matters.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterError

DST_GAPS = ("shift", "skip")
DST_FOLDS = ("first", "both")
# Longer than any DST shift in the tz database (2 h), so a wall time near a
# transition is never missed when we start walking before `after`.
DST_MARGIN = timedelta(hours=3)


class CronSyntaxError(ValueError):
    """Raised when a cron expression is not five valid fields."""


class UnknownZone(ValueError):
    """Raised when a time zone name is not an IANA zone known to zoneinfo."""


def check_expression(expression: str) -> str:
    """Return `expression` if it is five valid cron fields; raise CronSyntaxError otherwise."""
    fields = expression.split()
    if len(fields) != 5:
        raise CronSyntaxError(f"needs exactly 5 fields (minute hour day month weekday), got {len(fields)}")
    try:
        croniter(" ".join(fields))
    except (CroniterError, ValueError, KeyError) as exc:
        raise CronSyntaxError(f"{expression!r} is not a valid cron expression ({exc})") from None
    try:
        # A valid expression can still name no real day (February 30th).
        croniter(" ".join(fields), datetime(2000, 1, 1)).get_next(datetime)
    except CroniterError:
        raise CronSyntaxError(f"{expression!r} never fires (no date matches it)") from None
    return " ".join(fields)


def load_zone(name: str) -> ZoneInfo:
    """Return the zone called `name`; raise UnknownZone otherwise."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise UnknownZone(f"{name!r} is not an IANA time zone (e.g. Europe/Vienna)") from None


class CronRule:
    """A cron expression in a zone with a DST policy; gives the next due instant after a moment."""

    def __init__(self, expression: str, zone: str = "UTC", dst_gap: str = "shift", dst_fold: str = "first") -> None:
        self.expression = check_expression(expression)
        self.zone = load_zone(zone)
        if dst_gap not in DST_GAPS or dst_fold not in DST_FOLDS:
            raise ValueError(f"dst_gap must be one of {DST_GAPS}, dst_fold one of {DST_FOLDS}")
        self.dst_gap = dst_gap
        self.dst_fold = dst_fold

    def next_after(self, after: datetime) -> datetime:
        """Return the first due instant strictly after `after` (aware), as aware UTC."""
        wall = self._wall(after)
        fast = self._fast_next(after, wall)
        if fast is not None:
            return fast
        return self._slow_next(after, wall)

    def _wall(self, moment: datetime) -> datetime:
        return moment.astimezone(self.zone).replace(tzinfo=None, fold=0)

    def _fast_next(self, after: datetime, wall: datetime) -> datetime | None:
        # Away from transitions (all but a few hours a year) wall order is
        # instant order, so croniter's next wall time is the answer.
        if self._ambiguous(wall):
            return None
        candidate = croniter(self.expression, wall).get_next(datetime)
        if not self._exists(candidate) or self._ambiguous(candidate):
            return None
        return candidate.replace(tzinfo=self.zone).astimezone(UTC)

    def _slow_next(self, after: datetime, wall: datetime) -> datetime:
        best: datetime | None = None
        horizon: datetime | None = None
        for candidate_wall in self._walls_from(wall - DST_MARGIN):
            if horizon is not None and candidate_wall > horizon:
                break
            for instant in self.instants(candidate_wall):
                if instant > after and (best is None or instant < best):
                    best = instant
                    horizon = self._wall(best) + DST_MARGIN
        assert best is not None  # every valid expression matches again within 28 years
        return best

    def _walls_from(self, start: datetime) -> Iterator[datetime]:
        walk = croniter(self.expression, start)
        while True:
            yield walk.get_next(datetime)

    def instants(self, wall: datetime) -> list[datetime]:
        """Return the UTC instants at which the wall time `wall` fires under the DST policy."""
        if not self._exists(wall):
            return [self._transition(wall)] if self.dst_gap == "shift" else []
        first = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        if self.dst_fold == "both" and self._ambiguous(wall):
            return [first, wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)]
        return [first]

    def _exists(self, wall: datetime) -> bool:
        instant = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        return self._wall(instant) == wall

    def _ambiguous(self, wall: datetime) -> bool:
        early = wall.replace(tzinfo=self.zone, fold=0).utcoffset()
        late = wall.replace(tzinfo=self.zone, fold=1).utcoffset()
        return early != late and self._exists(wall)

    def _transition(self, wall: datetime) -> datetime:
        """Return the instant the clocks jumped over the nonexistent wall time `wall`."""
        low = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)  # before the jump
        high = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)  # after the jump
        before = low.astimezone(self.zone).utcoffset()
        # Offsets are constant between transitions; bisect to the second.
        while high - low > timedelta(seconds=1):
            middle = low + (high - low) / 2
            if middle.astimezone(self.zone).utcoffset() == before:
                low = middle
            else:
                high = middle
        return high.replace(microsecond=0)
