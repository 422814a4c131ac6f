"""Connection: the one place a Redis client is made from REDIS_URL.

Each process makes one client and passes it to every queue, worker and
scheduler. The timeouts are what keep a frozen Redis from hanging anything:
a web request fails within about 3 s (SPEC §8) and answers 503.
"""

from __future__ import annotations

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

# Web: connect within 1 s, read within 1 s, one quick retry: 503 in under 3 s.
WEB_TIMEOUT_SECONDS = 1.0
# Workers and schedulers wait longer for a reply; RQ raises the read timeout
# above its blocking dequeue timeout by itself.
PROCESS_TIMEOUT_SECONDS = 5.0


def connect(url: str, *, role: str = "web") -> Redis:
    """Return a Redis client for `url` (redis://, rediss:// or unix://) tuned for `role`."""
    timeout = WEB_TIMEOUT_SECONDS if role == "web" else PROCESS_TIMEOUT_SECONDS
    options: dict[str, object] = {} if url.startswith("unix://") else {"socket_keepalive": True}
    return Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        **options,
    )


def ping(connection: Redis) -> bool:
    """Return True when Redis answers PING, False when it cannot be reached."""
    try:
        return bool(connection.ping())
    except (RedisConnectionError, RedisTimeoutError):
        return False
