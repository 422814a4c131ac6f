"""Lua: the service's Redis scripts, one `.lua` file each in `service/core/lua/`, read once per process.

Each file opens with a comment listing its KEYS and ARGV. Callers keep the
Script object `script()` returns (redis-py sends EVALSHA, and loads the
script again by itself after a Redis restart).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from redis import Redis
from redis.commands.core import Script

SCRIPTS_DIR = Path(__file__).with_name("lua")


@cache
def source(name: str) -> str:
    """The text of script `name` (the file `<name>.lua`)."""
    return (SCRIPTS_DIR / f"{name}.lua").read_text()


def script(connection: Redis, name: str) -> Script:
    """Script `name` registered on `connection`."""
    return connection.register_script(source(name))
