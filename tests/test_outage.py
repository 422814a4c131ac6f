"""Outage.retry: the one way a step rides out a Redis outage (worker and scheduler start-up, storing outcomes)."""

from __future__ import annotations

import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from service.core.outage import MAX_DELAY_SECONDS, Outage

log = logging.getLogger("test.outage")


class Flaky:
    """A step that fails with a connection error `failures` times, then returns "done"."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or RedisConnectionError("Connection refused")
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


def test_a_step_is_retried_with_growing_backoff_until_redis_answers(caplog: pytest.LogCaptureFixture) -> None:
    waits: list[float] = []
    step = Flaky(failures=6)
    with caplog.at_level(logging.WARNING, logger="test.outage"):
        assert Outage(log, "start", sleep=waits.append).retry(step) == "done"
    assert waits == [0.25, 0.5, 1.0, 2.0, 4.0, MAX_DELAY_SECONDS]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "Redis unavailable" in messages[0] and "Redis is back" in messages[1]


def test_a_stop_request_ends_the_retries_with_the_error() -> None:
    step = Flaky(failures=10)
    stopping = iter([False, False, True])
    with pytest.raises(RedisConnectionError):
        Outage(log, "start", sleep=lambda _: None).retry(step, stop=lambda: next(stopping))
    assert step.calls == 3


def test_errors_that_are_not_an_outage_are_not_retried() -> None:
    step = Flaky(failures=1, error=ResponseError("WRONGTYPE"))
    with pytest.raises(ResponseError):
        Outage(log, "start", sleep=lambda _: None).retry(step)
    assert step.calls == 1
