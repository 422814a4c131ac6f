"""A Redis that refuses writes, on demand: out of memory (maxmemory, noeviction) or MISCONF (a failed save).

For fault tests and the soak: `refuse_writes(connection, kind)` makes the
server refuse every write until `accept_writes(connection, kind)`; reads go
on. Works on any server the tests run (Redis 6.2, 7, Valkey): MISCONF comes
from a real failed background save (the RDB file's path is made a directory).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from redis import Redis

from tests.helpers import wait_until

KINDS = ("oom", "misconf")


def refuse_writes(connection: Redis, kind: str) -> None:
    """Make Redis refuse writes: `oom` (a 1-byte maxmemory with noeviction) or `misconf` (a failed BGSAVE)."""
    if kind == "oom":
        connection.config_set("maxmemory-policy", "noeviction")
        connection.config_set("maxmemory", 1)
        return
    rdb = _rdb_path(connection)
    rdb.unlink(missing_ok=True)
    rdb.mkdir()  # the save's final rename fails: "Is a directory"
    connection.config_set("save", "3600 1")  # stop-writes-on-bgsave-error applies only with save points
    wait_until(lambda: _bgsave(connection), timeout=10, what="a background save to start")
    wait_until(lambda: _last_save(connection) == "err", timeout=10, what="the background save to fail")


def accept_writes(connection: Redis, kind: str) -> None:
    """Undo refuse_writes() (on a connection of its own: redis-py's health-check PING is refused under MISCONF)."""
    pool = connection.connection_pool
    kwargs = {**pool.connection_kwargs, "health_check_interval": 0}
    connection = Redis(connection_pool=pool.__class__(connection_class=pool.connection_class, **kwargs))
    if kind == "oom":
        connection.config_set("maxmemory", 0)
        return
    connection.config_set("save", "")  # no save points: a failed save no longer stops writes
    with contextlib.suppress(OSError):
        _rdb_path(connection).rmdir()


@contextlib.contextmanager
def writes_refused(connection: Redis, kind: str) -> Iterator[None]:
    refuse_writes(connection, kind)
    try:
        yield
    finally:
        accept_writes(connection, kind)


def _rdb_path(connection: Redis) -> Path:
    return Path(connection.config_get("dir")["dir"]) / connection.config_get("dbfilename")["dbfilename"]


def _bgsave(connection: Redis) -> bool:
    try:
        connection.bgsave()
    except Exception:  # a save or an AOF rewrite is already running: try again
        return False
    return True


def _last_save(connection: Redis) -> str:
    return str(connection.info("persistence")["rdb_last_bgsave_status"])
