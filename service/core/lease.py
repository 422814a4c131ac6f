"""Lease: a Redis lock owned by one process, renewed while it lives, released only by its owner.

Used for scheduler leadership. Acquire-or-renew and release are Lua scripts
that check the owner token, so a process that lost the lease (paused, cut
off) can neither renew nor delete someone else's.
"""

from __future__ import annotations

import uuid

from redis import Redis

_ACQUIRE_OR_RENEW = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if owner then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 2
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    """A lock at `key` held by `owner` for `ttl_ms` after each renewal."""

    def __init__(self, connection: Redis, key: str, ttl_ms: int, owner: str | None = None) -> None:
        self.connection = connection
        self.key = key
        self.ttl_ms = ttl_ms
        self.owner = owner or uuid.uuid4().hex
        self._acquire = connection.register_script(_ACQUIRE_OR_RENEW)
        self._release = connection.register_script(_RELEASE)
        self.held = False

    def acquire_or_renew(self) -> bool:
        """Take the lease if free, extend it if ours; return whether we hold it now."""
        self.held = bool(self._acquire(keys=[self.key], args=[self.owner, self.ttl_ms]))
        return self.held

    def release(self) -> None:
        """Give the lease up, if it is still ours."""
        self._release(keys=[self.key], args=[self.owner])
        self.held = False
