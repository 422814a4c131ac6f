"""A partitioned scheduler leader: cut off from Redis for 10 s in the middle of a burst, then back.

Two schedulers run on two "hosts" (network namespaces, tests.netns) linked
to the hub namespace where Redis runs; the test reaches Redis through its
unix socket. The leader's link goes down while it is firing a burst of
20,000 runs due at the same second and comes up 10 s later: what it sent
meanwhile may still reach Redis then (TCP retransmits). The other scheduler
must take over, every due time must be in its lane once, and nothing may be
fired from the old leader's stale plan. A second run also suspends the
leader's process for the cut (a paused VM): it resumes mid-pass with a plan
10 s old, and its next firing call must meet the fence. Skips with the reason where the
kernel refuses network namespaces, like the multi-host test.
"""

from __future__ import annotations

import signal
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from redis import Redis

import service.tasks.diag  # noqa: F401 - registers diag.*
from service.core.clock import server_now
from service.core.compat import parse_rq_date
from service.core.connection import connect
from service.core.keys import SCHEDULER_LOCK_KEY as LEASE_KEY
from service.core.keys import job_key
from service.schedules import operations as schedules
from service.schedules.spec import isoformat
from tests.helpers import wait_until
from tests.netns import Network
from tests.processes import Processes, ServiceProcess
from tests.redis_topology import RedisProcess
from tests.sightings import Sightings
from tests.test_multihost import hub_redis, network  # noqa: F401 - fixtures
from tests.test_schedule_process import leader

pytestmark = [pytest.mark.slow, pytest.mark.matrix]
BURST = 20_000
STEADY = 20
CUT_SECONDS = 10
EVERY_SECOND = {"task": "diag.echo", "interval": 1, "overlap": "allow", "coalesce": False}


def enqueued_at(redis: Redis, job_ids: list[str]) -> dict[str, float]:
    """Each job's enqueued_at (what the scheduler that created it thought "now" was), epoch seconds."""
    pipe = redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(job_key(job_id), "enqueued_at")
    values = pipe.execute()
    return {j: parse_rq_date(v).timestamp() for j, v in zip(job_ids, values, strict=True)}


@pytest.mark.parametrize("stalled", [False, True], ids=["running", "stalled"])
def test_a_leader_cut_off_mid_burst_for_ten_seconds_fires_nothing_when_it_returns(
    network: Network,  # noqa: F811 - the fixture
    hub_redis: RedisProcess,  # noqa: F811 - the fixture
    process_env: dict[str, str],
    tmp_path: Path,
    stalled: bool,
) -> None:
    assert hub_redis.socket_path is not None
    redis = connect(f"unix://{hub_redis.socket_path}", role="worker")
    runner = Processes(process_env, tmp_path)

    def start(host: str) -> ServiceProcess:
        url = f"redis://{network.links[host].hub_address}:{hub_redis.port}/0"
        command = [*network.run_in(host), sys.executable, "scheduler.py"]
        return runner.start(f"scheduler-{host}", *command, env={"REDIS_URL": url})

    try:
        hosts = {"a": start("a")}
        wait_until(lambda: redis.get(LEASE_KEY), timeout=30, what="a leader")
        hosts["b"] = start("b")
        wait_until(lambda: "Registering birth" in hosts["b"].output(), timeout=30, what="the second scheduler")
        for n in range(STEADY):
            schedules.upsert(redis, f"steady-{n}", EVERY_SECOND)
        due = isoformat(server_now(redis).replace(microsecond=0) + timedelta(seconds=4))
        schedules.upsert_many(redis, {f"user-{n:05d}": {"task": "diag.echo", "at": due} for n in range(BURST)})
        old = leader(redis, list(hosts.values()))
        cut = next(host for host, process in hosts.items() if process is old)
        owner = redis.get(LEASE_KEY)

        seen = Sightings(redis)
        in_burst = lambda: sum(1 for j in seen.first if j.startswith("user-"))  # noqa: E731
        seen.watch(lambda: in_burst() > 0, timeout=30, what="the burst to start")
        network.cut(cut)
        if stalled:  # a suspended VM: on return it resumes mid-pass, its plan and its "now" 10 s old
            old.signal(signal.SIGSTOP)
        cut_at = seen.now
        assert in_burst() < BURST, "the burst ended before the cut: nothing was cut mid-burst"
        seen.watch(lambda: seen.now > cut_at + CUT_SECONDS, timeout=CUT_SECONDS + 20, what="the cut to last")
        successor = redis.get(LEASE_KEY)
        network.restore(cut)
        if stalled:
            old.signal(signal.SIGCONT)
        restored_at = seen.now
        seen.watch(lambda: seen.now > restored_at + 8, timeout=30, what="8 s after the return")

        assert successor not in (None, owner), "nobody took over while the leader was cut off"
        assert redis.get(LEASE_KEY) == successor, "the old leader took the lease back"
        assert len(seen.order) == len(set(seen.order)), "a due time became two jobs"
        assert in_burst() == BURST, "a run of the burst was lost"
        for n in range(STEADY):
            dues = sorted(seen.runs(f"steady-{n}"))
            assert dues == list(range(dues[0], dues[0] + len(dues))), f"steady-{n} lost a due time"
            assert dues[-1] > restored_at + 5
        # A run fired from a plan made before the cut would carry that plan's "now", 10 s before it appeared.
        stale = {j: round(seen.first[j] - t, 1) for j, t in enqueued_at(redis, seen.order).items()}
        assert [j for j, lag in stale.items() if lag > 5] == []
        assert all(p.alive() for p in hosts.values()), "a scheduler exited"
        assert old.output().count("took leadership") == 1, "the old leader led again after its return"
        if stalled:
            # Its pass was cut short on return: either its next firing call met the fence (the lease is no
            # longer its own), or the reply it was waiting for when it was stopped counts as timed out (a
            # socket timeout runs on while a process is stopped) and the pass is dropped with the connection.
            # Either way nothing of that pass fired after the return (the lag check above).
            ends = ("lost the lease mid-pass", "Redis unavailable (TimeoutError)")
            wait_until(lambda: any(e in old.output() for e in ends), timeout=20, what="the stale pass to end")
    except BaseException:
        print(runner.dump_logs())
        raise
    finally:
        runner.stop_all()
        redis.close()
