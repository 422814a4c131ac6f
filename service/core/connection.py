"""Connection: the one place a Redis client is made from REDIS_URL.

Each process makes one client and passes it to every queue, worker and
scheduler. The timeouts are what keep a frozen Redis from hanging anything:
a web request fails within about 3 s and answers 503.

A `redis+sentinel://` URL gives a client whose connections ask the sentinels
for the current primary each time they connect, and drop a connection whose
server has been demoted (READONLY): after a failover every process finds the
new primary by itself, without a restart. A `rediss://` URL may carry the CA
and client-certificate files (Settings folds REDIS_TLS_*_FILE into it).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from redis import BlockingConnectionPool, Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool
from redis_sentinel_url import parse_sentinel_url

from service.core.config import DEV_REDIS_SOCKET, dev_redis_dir

# Web: connect within 1 s, read within 1 s, one quick retry: 503 in under 3 s.
WEB_TIMEOUT_SECONDS = 1.0
# Workers and schedulers wait longer for a reply; RQ raises the read timeout
# above its blocking dequeue timeout by itself.
PROCESS_TIMEOUT_SECONDS = 5.0
# Asking a sentinel is one short round trip on loopback or a LAN; a dead one
# must not eat the web's 3 s budget before the next sentinel is asked.
SENTINEL_TIMEOUT_SECONDS = 0.3
# After a connection attempt fails, the web opens no new connection for this long: requests answer 503 at
# once instead of each knocking again (a Redis at maxclients refuses them all, a frozen one costs each 2 s).
# Established connections keep serving meanwhile. Workers and schedulers back off in their loops instead.
WEB_REFUSED_COOLDOWN_SECONDS = 1.0
# A web process runs many threads (a wait parks one), but the GIL lets only a few talk to Redis at once:
# its pool is capped, and a thread waits this long for a free connection before the request answers 503.
WEB_MAX_CONNECTIONS = 32
WEB_POOL_WAIT_SECONDS = 0.5


class ConnectGate:
    """One process's memory of a failed connection attempt: new connections fail at once until the cool-down ends."""

    def __init__(self, cooldown_seconds: float) -> None:
        self.cooldown_seconds = cooldown_seconds
        self.closed_until = 0.0
        self.reason = ""

    def check(self) -> None:
        if time.monotonic() < self.closed_until:
            raise RedisConnectionError(f"not connecting: the last attempt failed moments ago ({self.reason})")

    def close(self, exc: RedisError) -> None:
        self.reason = str(exc)[:200]
        self.closed_until = time.monotonic() + self.cooldown_seconds

    def guard(self, connection_class: type) -> type:
        """A subclass of redis-py's `connection_class` whose new connections go through this gate."""
        gate = self

        class GatedConnection(connection_class):  # type: ignore[misc, valid-type]
            def connect(self) -> None:
                if self.is_connected:
                    return
                gate.check()
                try:
                    super().connect()
                except RedisError as exc:
                    gate.close(exc)
                    raise

        return GatedConnection


def connect(url: str, *, role: str = "web") -> Redis:
    """Return a Redis client for `url` (redis://, rediss://, unix://, redis+sentinel://) tuned for `role`."""
    timeout = WEB_TIMEOUT_SECONDS if role == "web" else PROCESS_TIMEOUT_SECONDS
    options: dict[str, Any] = {
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        # No PING health check before a command on an idle connection: a Redis that cannot persist (MISCONF)
        # refuses PING itself, which would fail that command, a read included. A dead connection fails the
        # command instead, and the retry below reconnects.
        "health_check_interval": 0,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    if not url.startswith("unix://"):
        options["socket_keepalive"] = True
    if url.startswith("redis+sentinel://"):
        client = _sentinel_client(url, options)
    elif role == "web":
        pool = BlockingConnectionPool.from_url(
            url, max_connections=WEB_MAX_CONNECTIONS, timeout=WEB_POOL_WAIT_SECONDS, **options
        )
        client = Redis(connection_pool=pool)
    else:
        client = Redis.from_url(url, **options)
    if role == "web":
        pool = client.connection_pool
        pool.connection_class = ConnectGate(WEB_REFUSED_COOLDOWN_SECONDS).guard(pool.connection_class)
    return client


def _sentinel_client(url: str, options: dict[str, Any]) -> Redis:
    """A client on the sentinels' current primary for the URL's service (redis-sentinel-url parses the URL)."""
    parsed = parse_sentinel_url(url)
    client_options = dict(parsed.client_options)
    min_other_sentinels = int(client_options.pop("min_other_sentinels", 0))
    sentinel_options = {
        "socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS,
        "socket_timeout": SENTINEL_TIMEOUT_SECONDS,
        **parsed.sentinel_options,
    }
    sentinel = Sentinel(
        parsed.hosts,
        min_other_sentinels=min_other_sentinels,
        sentinel_kwargs=sentinel_options,
        **{**options, **client_options},
    )
    return sentinel.master_for(parsed.default_client.service)


def connect_like(connection: Redis) -> Redis:
    """A second client with the same settings and its own connections (for a thread of the same process)."""
    pool = connection.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        return pool.sentinel_manager.master_for(pool.service_name, redis_class=type(connection))
    kwargs = dict(pool.connection_kwargs)
    return Redis(connection_pool=pool.__class__(connection_class=pool.connection_class, **kwargs))


def ping(connection: Redis) -> bool:
    """Return True when Redis answers PING, False when it cannot be reached.

    An error reply is an answer: Redis refuses PING too while it cannot persist (MISCONF), and reads still work.
    """
    try:
        return bool(connection.ping())
    except (RedisConnectionError, RedisTimeoutError):
        return False
    except ResponseError:
        return True


def dev_redis_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The unix:// URL of `make run`'s embedded Redis when it answers PING on its socket, else None."""
    socket_path = (dev_redis_dir(environ) / DEV_REDIS_SOCKET).resolve()
    if not socket_path.is_socket():
        return None
    url = f"unix://{socket_path}"
    client = Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return url if client.ping() else None
    except RedisError:
        return None
    finally:
        client.close()
