"""Schedule storage: how schedules are laid out in Redis (names in service.core.keys) and reading them back.

One small hash per schedule, every value under 64 bytes so Redis keeps it
as a listpack (about 25 bytes a field instead of ~70 in a hash table):

    t  template id: the spec minus args/kwargs, stored once in the templates
       hash and shared by every schedule with the same spec (refcounted)
    a  its call, `[args, kwargs]` or `[args, kwargs, group]` as JSON (absent when both are empty
       and it has no group)
    n  next due time, epoch ms (absent when none)   b  buffered run's due time
    p  "1" when paused      m  the pause note       o  origin when not "api"
    c, u  created and updated, epoch ms (every write of the spec sets u; firing compares n and u)
    s  run state, packed: last run, the five counters, lag last/max/sum/count,
       and how many run records were ever written (absent before the first)
    r<k>  run records, a ring of RUNS_KEPT slots (k = record number % RUNS_KEPT)

A run record is packed too: `<due ms>:<status><kind>:<offset ms>[:<lag ms>]`
(see decode_record); the run's job id is derived, `<schedule id>-<due s>`.
Two sorted sets index schedules: every id (score 0, so ids page
lexicographically) and the due set the scheduler fires from (score = next
due time in epoch ms, jitter included). The first release kept a JSON spec
and state under long field names and runs in a list: `legacy` schedules are
read as they are and migrated before anything writes them
(service.schedules.migrate).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

from redis import Redis
from redis.exceptions import ResponseError

from service.core.errors import InvalidField
from service.core.keys import ScheduleKeys
from service.core.lua import script
from service.schedules.spec import SCHEDULE_ID, DueTimes, ScheduleSpec, from_ms, isoformat, parse_instant, to_ms

log = logging.getLogger(__name__)
RUNS_KEPT = 100
COUNTERS = ("runs", "missed", "skipped", "dropped", "coalesced")
# The hash fields read back (never the run records).
FIELDS = ("t", "a", "n", "b", "p", "m", "o", "c", "u", "s", "spec")
LEGACY = "spec"  # only the first release's layout has it
STATUSES = {
    "e": "enqueued",
    "m": "missed",
    "c": "coalesced",
    "s": "skipped",
    "k": "skipped",
    "b": "buffered",
    "d": "dropped",
}
REASONS = {"s": "overlap", "k": "calendar"}
KINDS = {"s": "scheduled", "b": "buffered", "m": "manual", "f": "backfill"}


class RunState(NamedTuple):
    """What a schedule's runs left behind (field `s`): last run, counters, lag, records written."""

    last_run_at: int | None = None
    runs: int = 0
    missed: int = 0
    skipped: int = 0
    dropped: int = 0
    coalesced: int = 0
    lag_last_ms: int | None = None
    lag_max_ms: int | None = None
    lag_sum_ms: int = 0
    lag_count: int = 0
    records: int = 0

    @classmethod
    def parse(cls, packed: str | None) -> RunState:
        if not packed:
            return cls()
        values = [int(v) if v else None for v in packed.split(",")]
        return cls(*(v if v is not None or n in (0, 6, 7) else 0 for n, v in enumerate(values)))  # type: ignore[arg-type]

    def pack(self) -> str:
        return ",".join("" if v is None else str(v) for v in self)


@dataclass(frozen=True, slots=True)
class StoredSchedule:
    """A schedule as read from Redis: its id, its shared template and own call, and its other fields."""

    id: str
    template_json: str
    call_json: str
    fields: dict[str, str]
    legacy: bool = False  # in the first release's layout: migrate before writing

    @property
    def spec_json(self) -> str:
        """The canonical JSON of the whole spec (template and call)."""
        return join_spec(self.template_json, self.call_json)

    @property
    def spec(self) -> ScheduleSpec:
        return load_spec(self.spec_json)

    @property
    def template(self) -> ScheduleSpec:
        """The spec without its call: all that planning and firing need of it."""
        return load_spec(self.template_json)

    def number(self, field: str) -> int | None:
        value = self.fields.get(field)
        return int(value) if value else None

    @property
    def next_due(self) -> int | None:
        return self.number("n")

    @property
    def buffered_due(self) -> int | None:
        return self.number("b")

    @property
    def paused(self) -> bool:
        return self.fields.get("p") == "1"

    @property
    def origin(self) -> str:
        return self.fields.get("o") or "api"

    @property
    def state(self) -> RunState:
        return RunState.parse(self.fields.get("s"))


def split_spec(spec: ScheduleSpec) -> tuple[str, str]:
    """Return (template JSON, call JSON) of a spec: what schedules share, and their own args and kwargs."""
    data = spec.model_dump(mode="json", exclude={"paused"})
    call = [data.pop("args"), data.pop("kwargs")]
    group = data.pop("group")
    if group is not None:  # per schedule like its arguments: per-user groups still share one template
        call.append(group)
    template = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return template, (json.dumps(call, separators=(",", ":")) if call != [[], {}] else "")


def template_id(template_json: str) -> str:
    """The id a template is stored under: its content's hash, so equal templates are stored once."""
    return hashlib.sha1(template_json.encode()).hexdigest()[:16]


def dump_spec(spec: ScheduleSpec) -> str:
    """Return the canonical JSON of a spec (the same spec always gives the same string)."""
    return join_spec(*split_spec(spec))


@functools.lru_cache(maxsize=65_536)
def join_spec(template_json: str, call_json: str) -> str:
    """The canonical JSON of the spec made of a template and a call."""
    data = {**json.loads(template_json), "args": [], "kwargs": {}, "group": None}
    if call_json:
        call = json.loads(call_json)  # [args, kwargs] or [args, kwargs, group]
        data.update(args=call[0], kwargs=call[1], group=call[2] if len(call) > 2 else None)
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


@functools.lru_cache(maxsize=65_536)
def load_spec(spec_json: str) -> ScheduleSpec:
    """Return the spec stored as `spec_json` (cached: the scheduler reads the same templates every pass)."""
    return ScheduleSpec.model_validate(json.loads(spec_json))


_DUE_TIMES: dict[tuple, DueTimes] = {}


@functools.lru_cache(maxsize=65_536)
def due_times(spec_json: str) -> DueTimes:
    """Return the due-time calculator of a stored spec, shared by every spec with the same trigger."""
    spec = load_spec(spec_json)
    trigger = spec.trigger()
    found = _DUE_TIMES.get(trigger)
    if found is None:
        if len(_DUE_TIMES) >= 20_000:
            _DUE_TIMES.clear()
        found = _DUE_TIMES[trigger] = DueTimes(spec)
    return found


# -- run records ---------------------------------------------------------------------------------


def decode_record(schedule_id: str, packed: str) -> dict[str, Any]:
    """Return a run record as the API shows it, from its packed form `<due>:<status><kind>:<offset>[:<lag>]`."""
    due_text, codes, offset_text, *lag = packed.split(":")
    due, offset = int(due_text), int(offset_text)
    record: dict[str, Any] = {"scheduled_for": isoformat(from_ms(due)), "status": STATUSES[codes[0]]}
    if codes[0] != "e":
        record["recorded_at"] = isoformat(from_ms(due + offset))
        if codes[0] in REASONS:
            record["reason"] = REASONS[codes[0]]
        return record
    record.update(job_id=f"{schedule_id}-{due // 1000}", enqueued_at=isoformat(from_ms(due + offset)))
    record["kind"] = KINDS[codes[1]]
    if codes[1] == "s":  # a due run's lag: from its (jittered) target, or its due time when not given
        record["lag_ms"] = int(lag[0]) if lag else offset
    return record


def encode_record(record: dict[str, Any]) -> str:
    """The packed form of a run record as the API shows it (decode_record's inverse)."""
    due = parse_ms(record["scheduled_for"])
    if record.get("job_id"):
        kind = {name: code for code, name in KINDS.items()}[record.get("kind", "scheduled")]
        offset = parse_ms(record["enqueued_at"]) - due
        lag = record.get("lag_ms")
        return f"{due}:e{kind}:{offset}" + (f":{lag}" if kind == "s" and lag is not None and lag != offset else "")
    status = record["status"]
    code = {"missed": "m", "coalesced": "c", "buffered": "b", "dropped": "d"}.get(status)
    if status == "skipped":
        code = "k" if record.get("reason") == "calendar" else "s"
    return f"{due}:{code}:{parse_ms(record.get('recorded_at') or record['scheduled_for']) - due}"


def parse_ms(iso: str) -> int:
    return to_ms(parse_instant(iso, "time"))


def record_fields(state: RunState, limit: int) -> list[str]:
    """The hash fields of a schedule's newest `limit` run records, newest first."""
    count = min(limit, state.records, RUNS_KEPT)
    return [f"r{(state.records - 1 - n) % RUNS_KEPT}" for n in range(count)]


# -- reading ---------------------------------------------------------------------------------------

_TEMPLATES: dict[str, str] = {}  # template id -> JSON: content-addressed, so never stale


def templates(connection: Redis, ids: set[str]) -> dict[str, str]:
    """The JSON of each template id (read from Redis once per process, then from memory)."""
    missing = sorted(i for i in ids if i not in _TEMPLATES)
    if missing:
        if len(_TEMPLATES) > 65_536:
            _TEMPLATES.clear()
        for template, value in zip(missing, connection.hmget(ScheduleKeys.templates, missing), strict=True):
            if value is not None:
                _TEMPLATES[template] = value.decode(errors="replace")
    return {i: _TEMPLATES[i] for i in ids if i in _TEMPLATES}


def read(connection: Redis, schedule_id: str) -> StoredSchedule | None:
    """Return the stored schedule `schedule_id`, or None."""
    return read_many(connection, [schedule_id])[0]


def read_many(connection: Redis, schedule_ids: list[str]) -> list[StoredSchedule | None]:
    """Return the stored schedules for `schedule_ids` (None where missing or unreadable): one round trip, two for
    new templates."""
    return read_with_values(connection, schedule_ids)[1]


def read_with_values(
    connection: Redis, schedule_ids: list[str]
) -> tuple[list[list[bytes | None]], list[StoredSchedule | None]]:
    """read_many, and each schedule's FIELDS as stored (None when absent): what put_schedule.lua compares."""
    pipe = connection.pipeline(transaction=False)
    for schedule_id in schedule_ids:
        pipe.hmget(ScheduleKeys.schedule(schedule_id), FIELDS)
    replies = pipe.execute(raise_on_error=False)  # a key of another type (planted) reads as no schedule
    values = [v if isinstance(v, list) else [None] * len(FIELDS) for v in replies]
    raws = [decode(dict(zip(FIELDS, v, strict=True))) for v in values]
    known = templates(connection, {raw["t"] for raw in raws if raw.get("t")})
    found = []
    for schedule_id, raw in zip(schedule_ids, raws, strict=True):
        if LEGACY in raw:
            raw = decode(connection.hgetall(ScheduleKeys.schedule(schedule_id)))
        found.append(from_raw(schedule_id, raw, known))
    return values, found


def decode(raw: dict[Any, Any]) -> dict[str, str]:
    """Hash fields as text, the absent ones left out."""
    return {
        (k.decode(errors="replace") if isinstance(k, bytes) else k): (
            v.decode(errors="replace") if isinstance(v, bytes) else v
        )
        for k, v in raw.items()
        if v is not None
    }


def from_raw(schedule_id: str, raw: dict[str, str], known: dict[str, str]) -> StoredSchedule | None:
    """The schedule stored as the hash fields `raw` (None if it does not exist); `known`: template JSON by id."""
    if LEGACY in raw:
        return from_legacy(schedule_id, raw)
    template = known.get(raw.get("t", ""))
    if template is None:
        return None
    stored = StoredSchedule(schedule_id, template, raw.get("a", ""), raw)
    return stored if readable(stored) else None


def readable(stored: StoredSchedule) -> bool:
    """True when every field of `stored` reads (a record planted in Redis may not); a damaged one is logged."""
    try:
        stored.spec  # noqa: B018 - parses the template and call
        # Each time the API shows must be one (a planted "x" or 20 digits is not).
        for ms in (stored.number("c"), stored.number("u"), stored.next_due, stored.buffered_due):
            if ms is not None:
                from_ms(ms)
        if stored.state.last_run_at is not None:
            from_ms(stored.state.last_run_at)
        return True
    except Exception as exc:  # whatever a planted record holds
        log.warning("schedule %r cannot be read (%s): left alone", stored.id[:100], type(exc).__name__)
        return False


# The state fields of the first release, as they map to today's (run state aside).
RENAMED = {"next_due": "n", "buffered_due": "b", "note": "m"}


def _number(raw: dict[str, str], name: str) -> int | None:
    value = raw.get(name)
    return int(float(value)) if value not in (None, "") else None


def from_legacy(schedule_id: str, raw: dict[str, str], records: int = 0) -> StoredSchedule:
    """The first-release hash `raw` as a StoredSchedule (legacy: migrate before writing).

    `records`: how many run records it has (its list's length, capped at RUNS_KEPT).
    """
    template, call = split_spec(ScheduleSpec.model_validate(json.loads(raw[LEGACY])))
    fields = {new: raw[old] for old, new in RENAMED.items() if raw.get(old)}
    if raw.get("paused") == "1":
        fields["p"] = "1"
    if raw.get("origin") not in (None, "", "api"):
        fields["o"] = raw["origin"]
    for old, new in (("created_at", "c"), ("updated_at", "u")):
        if raw.get(old):
            fields[new] = str(parse_ms(raw[old]))
    state = RunState(
        _number(raw, "last_run_at"),
        *(_number(raw, name) or 0 for name in ("runs", "missed", "skipped", "dropped", "coalesced")),
        _number(raw, "lag_last_ms"),
        _number(raw, "lag_max_ms"),
        _number(raw, "lag_sum_ms") or 0,
        _number(raw, "lag_count") or 0,
        records,
    )
    if state != RunState():
        fields["s"] = state.pack()
    fields["t"] = template_id(template)
    if call:
        fields["a"] = call
    return StoredSchedule(schedule_id, template, call, fields, legacy=True)


READ_DUE = script("read_due")


DUE_KEYS = [ScheduleKeys.due, ScheduleKeys.templates]
Due = list[tuple[str, int, StoredSchedule | None]]


def read_due(connection: Redis, max_score_ms: int, limit: int, after: tuple[str, int] | None = None) -> Due:
    """Return up to `limit` (id, due score, schedule) with score <= `max_score_ms`, earliest first.

    A schedule carries only what firing needs (template, call, next and
    buffered due times, and its fields n and u as read: the fire script's
    compare-and-set); None where a due member has no schedule, and a
    legacy one (first-release layout) as LEGACY_DUE for the caller to migrate.
    `after`: the last (id, score) of the batch before, read after it while it has not fired (read_due.lua).
    """
    return parse_due(READ_DUE(keys=DUE_KEYS, args=due_args(max_score_ms, limit, after), client=connection))


def due_args(max_score_ms: int, limit: int, after: tuple[str, int] | None = None) -> list[Any]:
    """read_due.lua's arguments (see read_due)."""
    return [ScheduleKeys.prefix, max_score_ms, limit, *(after or ())]


def parse_due(reply: bytes) -> Due:
    """read_due.lua's reply as read_due returns it."""
    specs, rows = json.loads(reply)
    found: list[tuple[str, int, StoredSchedule | None]] = []
    for start in range(0, len(rows), 7):  # flat: one list for the batch, not one per schedule
        schedule_id, score, number, next_due, buffered_due, call, updated = rows[start : start + 7]
        score = int(float(score))
        if number <= 0:  # 0: no schedule hash; -1: first-release layout
            found.append((schedule_id, score, LEGACY_DUE if number < 0 else None))
            continue
        fields = {"n": next_due, "u": updated}
        if buffered_due:
            fields["b"] = buffered_due
        found.append((schedule_id, score, StoredSchedule(schedule_id, specs[number - 1], call, fields)))
    return found


# Stands for a due schedule still in the first release's layout (read_due's caller migrates it).
LEGACY_DUE = StoredSchedule("", "{}", "", {}, legacy=True)


def id_page(
    connection: Redis, index: str, cursor: str | None, limit: int, max_page: int
) -> tuple[list[str], str | None]:
    """One page of the ids in sorted set `index` (all scores 0, so in id order) after `cursor`, and the next cursor.

    Schedules and calendars page alike: their ids have one shape, and a cursor is the last id of a page.
    """
    if not 1 <= limit <= max_page:
        raise InvalidField("limit", f"must be 1 to {max_page}")
    if cursor and not SCHEDULE_ID.fullmatch(cursor):
        raise InvalidField("cursor", "not a cursor this API returned")
    start = f"({cursor}" if cursor else "-"
    ids = [i.decode() for i in connection.zrangebylex(index, start, "+", start=0, num=limit + 1)]
    page = ids[:limit]
    return page, page[-1] if len(ids) > limit and page else None


def refuse_planted(connection: Redis, kinds: dict[str, str]) -> None:
    """Raise ResponseError (a 503) if a shared key holds another type than `kinds` gives it (planted in Redis).

    Checked before a MULTI that writes them: Redis runs the rest of a MULTI past a command that fails, so a
    key of the wrong type would leave the write half done.
    """
    pipe = connection.pipeline(transaction=False)
    for key in kinds:
        pipe.type(key)
    for (key, kind), found in zip(kinds.items(), pipe.execute(), strict=True):
        if found not in (b"none", kind.encode()):
            raise ResponseError(f"WRONGTYPE {key} holds a {found.decode(errors='replace')}, not a {kind}")
