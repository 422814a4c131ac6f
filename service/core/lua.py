"""Lua: the service's Redis scripts, one `.lua` file each in `service/core/lua/`, loaded once per process.

Each file opens with a comment listing its KEYS and ARGV and what it
returns; key names come from service.core.keys. `script(name)` returns the
one Script object of a file. Every call names the client it runs on (a
Redis client or a pipeline): redis-py sends EVALSHA, and loads the script
again by itself after a Redis restart. Arguments that never change (key
prefixes, field names) are baked into a script's text when it is loaded,
`@NAME@` standing for a Lua string: Redis then converts fewer arguments per call.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from redis.commands.core import Script

SCRIPTS_DIR = Path(__file__).with_name("lua")


def lua_string(value: str) -> str:
    """`value` as a Lua string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


@cache
def script(name: str, **constants: str) -> Script:
    """The script in `<name>.lua` with its `@NAME@` constants filled in, read and hashed once per process;
    call it with `client=`."""
    text = (SCRIPTS_DIR / f"{name}.lua").read_text()
    for constant, value in constants.items():
        text = text.replace(f"@{constant}@", lua_string(value))
    missing = re.search(r"@[A-Z_]+@", text)
    if missing:
        raise ValueError(f"{name}.lua: no value given for {missing.group()}")
    # No default client (the text is given as bytes, so none is needed to hash
    # it): a call without client= fails at once instead of using some connection.
    return Script(None, text.encode())  # type: ignore[arg-type]
