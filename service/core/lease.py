"""Lease: a Redis lock owned by one process, renewed while it lives, released only by its owner.

Used for scheduler leadership and for one reaper pass at a time. It is
redis-py's Lock with a fixed owner token: renewing (`reacquire`) and
releasing check the token inside Redis, so a process that lost the lease
(paused, cut off) can neither renew nor delete someone else's. The token
stays the same for the life of the Lease, so scripts can fence on it (the
scheduler's firing script refuses to fire unless the key still holds it).
"""

from __future__ import annotations

import contextlib
import uuid

from redis import Redis
from redis.exceptions import LockError


class Lease:
    """A lock at `key` held by `owner` for `ttl_ms` after each renewal."""

    def __init__(self, connection: Redis, key: str, ttl_ms: int, owner: str | None = None) -> None:
        self.owner = owner or uuid.uuid4().hex
        self._lock = connection.lock(key, timeout=ttl_ms / 1000, thread_local=False)
        self.held = False

    def acquire_or_renew(self) -> bool:
        """Extend the lease if it is still ours, else take it if it is free; return whether we hold it now."""
        try:
            self.held = self._lock.reacquire()
        except LockError:  # never taken, released, expired, or another owner's now
            self.held = self._lock.acquire(blocking=False, token=self.owner)
        return self.held

    def release(self) -> None:
        """Give the lease up, if it is still ours."""
        self.held = False
        with contextlib.suppress(LockError):  # not ours (any more): nothing to give up
            self._lock.release()
