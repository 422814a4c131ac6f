"""Clock skew for one process: libfaketime preloaded, the process's wall clock N seconds off the true one.

Only the process started with `skewed(seconds)` in its environment is off;
Redis and the test keep the true clock. libfaketime shifts the monotonic
clock by the same offset (leaving it alone breaks time.sleep on Python
3.11), so the process's timeouts and sleeps still run at the true rate.
Without libfaketime (Debian's `faketime` package, which `make test`
installs as root) the test skips with the reason, and fails under CI=true.
"""

from __future__ import annotations

import glob
import os

import pytest

LIBRARY_PATTERNS = (
    "/usr/lib/*/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)


def libfaketime() -> str | None:
    """The path of libfaketime's shared library, or None when it is not installed."""
    for pattern in LIBRARY_PATTERNS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def skewed(seconds: int) -> dict[str, str]:
    """The environment entries that start a process `seconds` off the true clock (negative: behind)."""
    library = libfaketime()
    if library is None:
        reason = "libfaketime is not installed (Debian: apt-get install faketime)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return {"LD_PRELOAD": library, "FAKETIME": f"{seconds:+d}s"}
