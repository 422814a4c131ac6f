"""Test helpers: poll with a deadline instead of sleeping."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from typing import TypeVar

from redis import Redis

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> T:
    """Return the first truthy value of `predicate()`; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def http_ok(url: str) -> bool:
    """Return True when `url` answers 200 within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def snapshot(connection: Redis) -> dict[bytes, bytes | None]:
    """Every key and its serialized value (DUMP): equal snapshots mean nothing in the database changed."""
    return {key: connection.dump(key) for key in connection.scan_iter(count=1000)}
