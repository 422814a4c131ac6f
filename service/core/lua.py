"""Lua: the service's Redis scripts, one `.lua` file each in `service/core/lua/`, loaded once per process.

Each file opens with a comment listing its KEYS and ARGV and what it
returns; key names come from service.core.keys. `script(name)` returns the
one Script object of a file. Every call names the client it runs on (a
Redis client or a pipeline): redis-py sends EVALSHA, and loads the script
again by itself after a Redis restart.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from redis.commands.core import Script

SCRIPTS_DIR = Path(__file__).with_name("lua")


@cache
def script(name: str) -> Script:
    """The script in `<name>.lua`, read and hashed once per process; call it with `client=`."""
    text = (SCRIPTS_DIR / f"{name}.lua").read_text()
    # No default client (the text is given as bytes, so none is needed to hash
    # it): a call without client= fails at once instead of using some connection.
    return Script(None, text.encode())  # type: ignore[arg-type]
