"""RetryPolicy.intervals: the one retry-interval policy of API jobs and schedule runs."""

from __future__ import annotations

from service.tasks.registry import EXPONENTIAL_CAP_SECONDS, RetryPolicy


def test_fixed_backoff_is_used_as_given() -> None:
    policy = RetryPolicy(max=3, backoff=(5, 30))
    assert policy.intervals() == [5, 30] and not policy.jittered
    assert RetryPolicy(max=2, backoff=()).intervals() == [0]


def test_exponential_backoff_doubles_from_ten_seconds_within_a_quarter_either_way_up_to_an_hour() -> None:
    policy = RetryPolicy(max=12, backoff="exponential")
    assert policy.jittered
    for _ in range(50):
        intervals = policy.intervals()
        assert len(intervals) == 12
        for n, seconds in enumerate(intervals):
            base = min(10 * 2**n, EXPONENTIAL_CAP_SECONDS)
            assert 0.75 * base - 0.5 <= seconds <= 1.25 * base + 0.5


def test_jobs_failing_together_draw_different_intervals() -> None:
    policy = RetryPolicy(max=3, backoff="exponential")
    assert len({tuple(policy.intervals()) for _ in range(20)}) > 1


def test_no_retry_has_no_jitter() -> None:
    assert not RetryPolicy(max=0, backoff="exponential").jittered
