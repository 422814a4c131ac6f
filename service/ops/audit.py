"""Audit log: who changed what, and every refused token, in a capped Redis stream; never a token.

Each event holds principal (a token's name), action, target, status,
remote_addr and request_id; its time is its stream id (Redis's clock).
XADD ... MAXLEN ~ keeps about `max_events` of them (trimmed a macro node at
a time), and every event is also logged on the `service.audit` logger, so a
log shipper keeps what the stream trims and what someone with Redis access
deletes. The web app records accepted state changes and every 401/403
(service.api.audit); the CLI records its own state changes.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.client import Pipeline

from service.core.config import whole_number
from service.core.errors import InvalidField
from service.core.keys import AUDIT_KEY

log = logging.getLogger("service.audit")

# A stream id as XADD makes them: milliseconds-sequence.
CURSOR = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
# Field lengths kept: a target is an id or a route, never a body.
MAX_FIELD = 200


@dataclass(frozen=True)
class AuditEvent:
    """One audited request: who, what, on what, with which outcome, from where."""

    principal: str
    action: str
    target: str
    status: int
    remote_addr: str = ""
    request_id: str = ""

    def fields(self) -> dict[str, str]:
        """The stream fields: printable ASCII only (a newline in a path cannot forge a log line), bounded."""
        return {name: printable(str(value)) for name, value in asdict(self).items()}


def printable(text: str) -> str:
    """`text` with anything but printable ASCII escaped, cut to MAX_FIELD characters."""
    if text.isascii() and text.isprintable():
        return text[:MAX_FIELD]
    return text.encode("unicode_escape").decode("ascii")[:MAX_FIELD]


def record(client: Redis | Pipeline, event: AuditEvent, max_events: int) -> None:
    """Append `event` on `client` (a pipeline to ride along with the caller's writes) and log it."""
    fields = event.fields()
    client.xadd(AUDIT_KEY, fields, maxlen=max_events, approximate=True)  # type: ignore[arg-type]
    _log(fields)


def _log(fields: dict[str, str]) -> None:
    log.info("audit %(principal)s %(action)s %(target)s %(status)s", fields, extra={"audit": fields})


@dataclass
class RideAlong:
    """An audit event a write's own script records (one round trip less, and never one without the other);
    its status is the writer's to give. `recorded` once that script has written it."""

    event: AuditEvent
    max_events: int
    recorded: bool = False

    def script_args(self, status: int) -> dict[str, Any]:
        """What the script XADDs (put_schedule.lua's `audit`): the stream, its MAXLEN ~, the fields in order."""
        fields = replace(self.event, status=status).fields()
        return {"key": AUDIT_KEY, "maxlen": str(self.max_events), "fields": [x for kv in fields.items() for x in kv]}

    def written(self, args: dict[str, Any]) -> None:
        """The script wrote the event `args` describes: log it as record() does."""
        self.recorded = True
        pairs = args["fields"]
        _log(dict(zip(pairs[::2], pairs[1::2], strict=True)))


def list_events(connection: Redis, limit: int, cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Return up to `limit` events newest first, older than `cursor` (an event id), and the next cursor."""
    if cursor is not None and not CURSOR.fullmatch(cursor):
        raise InvalidField("cursor", "not a cursor this API returned")
    newest = f"({cursor}" if cursor else "+"
    entries = connection.xrevrange(AUDIT_KEY, max=newest, min="-", count=limit + 1)
    events = [_event(entry_id, fields) for entry_id, fields in entries[:limit]]
    return events, (events[-1]["id"] if len(entries) > limit else None)


def _event(entry_id: bytes, fields: dict[bytes, bytes]) -> dict[str, Any]:
    event_id = entry_id.decode()
    moment = datetime.fromtimestamp(int(event_id.split("-")[0]) / 1000, UTC)
    data: dict[str, Any] = {k.decode(): v.decode() for k, v in fields.items()}
    data["status"] = whole_number(data.get("status", ""))
    return {"id": event_id, "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"), **data}
