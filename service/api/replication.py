"""Replication: hold an API write's answer until enough replicas have it (REDIS_MIN_REPLICAS_ACK).

Redis replicates asynchronously: a primary that dies a moment after it
answered takes its last writes with it, and Sentinel promotes a replica that
never saw them. With REDIS_MIN_REPLICAS_ACK=N every successful write request
of the API (POST, PUT, DELETE answered 2xx) waits, before it is answered, until
N replicas have confirmed everything written so far (WAIT N <timeout>). When
they do not within REDIS_REPLICA_ACK_TIMEOUT_MS the client gets a 503 and
retries (with the same idempotency_key, a retried enqueue is not a second
job); the write may still survive, it is only not promised.

WAIT only covers writes made on its own connection, and the pool may hand
the WAIT another connection than the write's: a tiny write first (INCR on a
key of ours) on the WAIT's connection moves its offset past the request's
writes, since the replication stream is in order.
"""

from __future__ import annotations

import logging

from flask import Flask, Response
from redis import Redis
from redis.exceptions import RedisError

from service.api.errors import error_response

log = logging.getLogger(__name__)

ACK_KEY = "service:replication:ack"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def acknowledged_replicas(connection: Redis, replicas: int, timeout_ms: int) -> int:
    """Return how many replicas confirmed every write made before this call (waiting up to `timeout_ms`)."""
    pipe = connection.pipeline(transaction=False)
    pipe.incr(ACK_KEY)
    pipe.execute_command("WAIT", replicas, timeout_ms)
    return int(pipe.execute()[1])


def init_app(app: Flask) -> None:
    """Make every successful API write wait for REDIS_MIN_REPLICAS_ACK replicas (when set)."""
    settings = app.extensions["settings"]
    if settings.min_replicas_ack <= 0:
        return

    @app.after_request
    def wait_for_replicas(response: Response) -> Response:
        from flask import request

        if request.method not in WRITE_METHODS or not 200 <= response.status_code < 300:
            return response
        wanted = settings.min_replicas_ack
        try:
            got = acknowledged_replicas(app.extensions["redis"], wanted, settings.replica_ack_timeout_ms)
        except RedisError as exc:
            log.warning("write not confirmed by replicas: Redis unavailable (%s)", type(exc).__name__)
            got = 0
        if got >= wanted:
            return response
        log.warning("write confirmed by %d of %d replicas; answering 503", got, wanted)
        return error_response(
            503,
            "not_replicated",
            f"the write reached the primary but only {got} of {wanted} replicas within "
            f"{settings.replica_ack_timeout_ms} ms; retry (with the same idempotency_key)",
        )
