"""A Redis that answers but refuses writes: full (`maxmemory` under noeviction) or unable to save (MISCONF).

`refusing_writes(connection, how)` puts the test's own Redis in that state
for the `with` block and takes it out again, whatever the block raised.
MISCONF is made the way that works as root on Redis 6.2, 7.0 and Valkey: a
save point, and a directory where the RDB file must go, so BGSAVE fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from redis import Redis

from tests.helpers import wait_until

HOW = ("maxmemory", "misconf")


def last_save(connection: Redis) -> str | None:
    """The last BGSAVE's status ("ok", "err"), or None while one runs."""
    info = connection.info("persistence")
    return None if info["rdb_bgsave_in_progress"] else info["rdb_last_bgsave_status"]


@contextmanager
def refusing_writes(connection: Redis, how: str) -> Iterator[None]:
    """Redis refuses every write that adds data inside the block (`how`: maxmemory or misconf)."""
    if how == "maxmemory":
        connection.config_set("maxmemory", connection.info("memory")["used_memory"] // 2)
        try:
            yield
        finally:
            connection.config_set("maxmemory", 0)
        return
    folder = Path(connection.config_get("dir")["dir"])
    target = folder / connection.config_get("dbfilename")["dbfilename"]
    target.unlink(missing_ok=True)
    target.mkdir()  # the save's final rename fails: "Is a directory"
    connection.config_set("save", "3600 1")
    try:
        wait_until(lambda: last_save(connection) is not None, timeout=30, what="no save to be running")
        connection.bgsave(schedule=True)
        wait_until(lambda: last_save(connection) == "err", timeout=30, what="the save to fail")
        yield
    finally:
        target.rmdir()
        wait_until(lambda: last_save(connection) is not None, timeout=30, what="no save to be running")
        connection.bgsave(schedule=True)
        wait_until(lambda: last_save(connection) == "ok", timeout=30, what="a save to succeed")
        connection.config_set("save", "")
