"""Schedules keep Redis's clock: schedulers and schedule writers whose host clock is five minutes off.

The skewed processes run under libfaketime (tests.clock_skew); Redis and
this test keep the true clock. A run is "seen" when a poll of the lane
finds it, timed by Redis's TIME in the same MULTI.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import datetime, timedelta

import pytest
from redis import Redis

import service.tasks.diag  # noqa: F401 - registers diag.*
from service.core.clock import server_now
from service.core.keys import SCHEDULER_LOCK_KEY as LEASE_KEY
from service.core.keys import queue_key
from service.schedules import operations as schedules
from service.schedules.spec import isoformat, parse_instant
from tests.clock_skew import skewed
from tests.helpers import wait_until
from tests.processes import ROOT, Processes
from tests.sightings import Sightings
from tests.test_schedule_process import leader

pytestmark = [pytest.mark.slow, pytest.mark.matrix]
OFFSETS = pytest.mark.parametrize("offset", [300, -300], ids=["5-min-ahead", "5-min-behind"])
EVERY_SECOND = {"task": "diag.echo", "interval": 1, "overlap": "allow", "coalesce": False}


@OFFSETS
def test_a_scheduler_five_minutes_off_fires_nothing_early_and_nothing_late(
    connection: Redis, processes: Processes, offset: int
) -> None:
    processes.scheduler(env=skewed(offset))
    wait_until(lambda: connection.get(LEASE_KEY), timeout=20, what="the skewed scheduler to lead")
    at = (server_now(connection) + timedelta(seconds=3)).replace(microsecond=0)
    schedules.upsert(connection, "once", {"task": "diag.echo", "at": isoformat(at)})
    schedules.upsert(connection, "tick", EVERY_SECOND)

    seen = Sightings(connection)
    seen.watch(lambda: bool(seen.runs("once")) and len(seen.runs("tick")) >= 6, timeout=30, what="the runs")
    assert list(seen.runs("once")) == [int(at.timestamp())]
    for due, moment in [*seen.runs("once").items(), *seen.runs("tick").items()]:
        assert due <= moment, f"due at {due}, in the lane {due - moment:.1f} s early"
        assert moment < due + 1, f"due at {due}, in the lane {moment - due:.1f} s late"


@OFFSETS
def test_a_skewed_and_a_true_scheduler_fire_each_due_time_once_across_a_takeover(
    connection: Redis, processes: Processes, offset: int
) -> None:
    pair = [processes.scheduler(name="skewed", env=skewed(offset)), processes.scheduler(name="true")]
    schedules.upsert(connection, "pair", EVERY_SECOND)
    seen = Sightings(connection)
    seen.watch(lambda: len(seen.runs("pair")) >= 5, timeout=30, what="5 runs")
    first = leader(connection, pair)
    first.signal(signal.SIGKILL)
    before = len(seen.runs("pair"))
    seen.watch(lambda: len(seen.runs("pair")) >= before + 8, timeout=60, what="8 runs after the takeover")
    assert leader(connection, [s for s in pair if s is not first]) is not first

    queued = [i.decode() for i in connection.lrange(queue_key("default"), 0, -1)]
    assert len(queued) == len(set(queued))  # no due time became two jobs
    runs = seen.runs("pair")
    assert sorted(runs) == list(range(min(runs), min(runs) + len(runs)))  # none lost across the takeover
    early = {due: round(due - moment, 1) for due, moment in runs.items() if moment < due}
    assert early == {}


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "service", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@OFFSETS
def test_writes_and_previews_from_a_host_five_minutes_off_count_from_redis_time(
    connection: Redis, process_env: dict[str, str], offset: int
) -> None:
    env = {**process_env, **skewed(offset)}
    before = server_now(connection)
    saved = json.loads(cli(env, "schedules", "add", "minutely", "--task", "diag.echo", "--interval", "60"))
    preview = cli(env, "schedules", "preview", "--task", "diag.echo", "--interval", "60", "--count", "1")
    after = server_now(connection)

    def first_due_is_next_minute(value: str) -> bool:
        due: datetime = parse_instant(value, "due")
        return before < due <= after + timedelta(seconds=60)

    assert first_due_is_next_minute(saved["next_run_at"]), (saved["next_run_at"], before)
    assert first_due_is_next_minute(preview.splitlines()[1].split()[0]), (preview, before)
    assert first_due_is_next_minute(schedules.get(connection, "minutely")["next_run_at"])
