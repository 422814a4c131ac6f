"""The lease (scheduler leadership, one reaper at a time): taken when free, renewed and released only by its owner."""

from __future__ import annotations

from redis import Redis

from service.core import keys
from service.core.lease import Lease
from service.workers.reaper import Reaper
from tests.helpers import wait_until

KEY = "lease-under-test"


def test_a_free_lease_is_taken_for_its_ttl_with_the_owner_token(connection: Redis) -> None:
    lease = Lease(connection, KEY, 4000, owner="a")
    assert lease.acquire_or_renew() and lease.held
    assert connection.get(KEY) == b"a"
    assert 3000 < connection.pttl(KEY) <= 4000


def test_only_the_owner_renews_it(connection: Redis) -> None:
    a, b = Lease(connection, KEY, 4000, owner="a"), Lease(connection, KEY, 4000, owner="b")
    a.acquire_or_renew()
    connection.pexpire(KEY, 500)
    assert not b.acquire_or_renew() and not b.held
    assert connection.get(KEY) == b"a" and connection.pttl(KEY) <= 500  # b neither took nor extended it
    assert a.acquire_or_renew()
    assert 3000 < connection.pttl(KEY) <= 4000


def test_only_the_owner_releases_it(connection: Redis) -> None:
    a, b = Lease(connection, KEY, 4000, owner="a"), Lease(connection, KEY, 4000, owner="b")
    a.acquire_or_renew()
    b.release()
    assert connection.get(KEY) == b"a"
    a.release()
    assert connection.get(KEY) is None and not a.held
    assert b.acquire_or_renew()


def test_an_expired_lease_goes_to_the_next_taker_and_its_old_owner_cannot_renew_it(connection: Redis) -> None:
    a, b = Lease(connection, KEY, 4000, owner="a"), Lease(connection, KEY, 4000, owner="b")
    a.acquire_or_renew()
    connection.pexpire(KEY, 1)  # a stalled past its ttl
    wait_until(lambda: not connection.exists(KEY), what="the lease to expire")
    assert b.acquire_or_renew()
    assert not a.acquire_or_renew() and not a.held
    a.release()
    assert connection.get(KEY) == b"b"


def test_a_lease_released_can_be_taken_again_by_its_owner(connection: Redis) -> None:
    a = Lease(connection, KEY, 4000, owner="a")
    a.acquire_or_renew()
    a.release()
    assert a.acquire_or_renew() and connection.get(KEY) == b"a"


def test_one_reaper_at_a_time_and_the_lock_is_released_after_a_pass(connection: Redis) -> None:
    dead = keys.claimed_key("dead-worker")
    connection.rpush(dead, "vanished-job")
    connection.sadd(keys.CLAIMERS_KEY, "dead-worker")
    other = Lease(connection, keys.REAPER_LOCK_KEY, 30_000, owner="another-reaper")
    other.acquire_or_renew()
    reaper = Reaper(connection)
    assert reaper.reap() == 0 and connection.llen(dead) == 1  # another reaper is at it
    other.release()
    assert reaper.reap() == 1
    assert connection.llen(dead) == 0 and not connection.sismember(keys.CLAIMERS_KEY, "dead-worker")
    assert not connection.exists(keys.REAPER_LOCK_KEY)
