"""Fair share within a lane: the write and claim scripts on a real Redis (groups take turns, RQ still counts)."""

from __future__ import annotations

import base64

import pytest
from flask.testing import FlaskClient
from redis import Redis
from rq.queue import Queue

import service.tasks.diag  # noqa: F401 - registers diag.*
from service.core import keys
from service.core.errors import InvalidField
from service.jobs.enqueue import InternalRequest, enqueue, enqueue_many
from service.jobs.model import ServiceQueue
from service.ops.monitor import group_counts
from service.workers.claim import Claim, Claimer
from tests.conftest import TOKEN

LANE = "default"


def put(connection: Redis, *groups: str | None) -> list[str]:
    """One diag.echo job per entry, in its group (None: no group), through the API's writer; their ids."""
    return [j.id for j in enqueue_many(connection, [InternalRequest("diag.echo", queue=LANE, group=g) for g in groups])]


def claims(connection: Redis, count: int) -> list[str]:
    claimer = Claimer(connection, "w1")
    taken = []
    for _ in range(count):
        found = claimer.claim([LANE], 60)
        assert isinstance(found, Claim)
        taken.append(found.job_id)
    return taken


def test_groups_take_turns_so_a_backlog_does_not_hold_back_another_group(connection: Redis) -> None:
    a = put(connection, *["a"] * 6)
    b = put(connection, "b", "b")
    # The lane head's turn (the oldest job, a's), then a's and b's turns, round and round.
    assert claims(connection, 6) == [a[0], a[1], b[0], a[2], a[3], b[1]]
    assert claims(connection, 2) == [a[4], a[5]]
    assert not connection.exists(keys.groups_key(LANE))  # no group waits: the lane is plain again


def test_the_lane_list_holds_every_waiting_job_as_rq_counts_them(connection: Redis) -> None:
    ids = put(connection, "a", None, "b", "a")
    assert Queue(LANE, connection=connection).count == 4
    assert Queue(LANE, connection=connection).get_job_ids() == ids  # rq info, rq-dashboard: enqueue order
    taken = claims(connection, 2)
    assert Queue(LANE, connection=connection).count == 2
    assert set(Queue(LANE, connection=connection).get_job_ids()) == set(ids) - set(taken)


def test_jobs_without_a_group_are_one_group_once_the_lane_takes_turns(connection: Redis) -> None:
    a = put(connection, *["a"] * 4)
    plain = put(connection, None, None)
    # Lane head (a), a, then the ungrouped group, in turn.
    assert claims(connection, 6) == [a[0], a[1], plain[0], a[2], a[3], plain[1]]


def test_a_lane_without_groups_claims_its_head_and_keeps_no_turns(connection: Redis) -> None:
    ids = put(connection, None, None, None)
    assert claims(connection, 3) == ids
    assert not connection.exists(keys.groups_key(LANE), keys.group_key(LANE, keys.UNGROUPED))


def test_a_job_rq_put_in_the_lane_is_taken_on_the_lane_heads_turn(connection: Redis) -> None:
    a = put(connection, "a", "a")
    ServiceQueue(LANE, connection=connection).push_job_id("rq-pushed", at_front=True)  # a requeue, a retry
    assert claims(connection, 3) == ["rq-pushed", a[0], a[1]]


def test_a_canceled_job_is_skipped_and_its_groups_turn_goes_on(connection: Redis) -> None:
    a = put(connection, "a", "a", "a")
    b = put(connection, "b", "b")
    connection.lrem(keys.queue_key(LANE), 1, b[0])  # what RQ's cancel does to the lane
    assert claims(connection, 4) == [a[0], a[1], b[1], a[2]]


def test_a_held_group_passes_its_turn_until_its_time(connection: Redis) -> None:
    a = put(connection, "a", "a", "a")
    b = put(connection, "b", "b")
    seconds, _ = connection.time()
    connection.hset(keys.held_groups_key(LANE), "b", seconds + 3600)  # b is at a task's group cap
    assert claims(connection, 3) == a
    connection.hset(keys.held_groups_key(LANE), "b", seconds - 1)
    assert claims(connection, 2) == b
    assert not connection.exists(keys.held_groups_key(LANE))


def test_turns_of_an_emptied_lane_are_dropped(connection: Redis) -> None:
    put(connection, "a", "b")
    connection.delete(keys.queue_key(LANE))  # rq-dashboard's "empty queue"
    assert Claimer(connection, "w1").claim([LANE], 60) is None
    assert not connection.keys("svc:groups*")


def test_a_group_is_counted_per_lane_while_it_has_waiting_jobs(connection: Redis) -> None:
    put(connection, "a", "a", "b", None)
    assert group_counts(connection) == {"high": 0, "default": 2, "low": 0}
    claims(connection, 2)  # a's two jobs: the lane head's turn, then a's
    assert group_counts(connection)[LANE] == 1


def test_a_job_reads_its_group(connection: Redis) -> None:
    job = enqueue(connection, InternalRequest("diag.echo", group="acct:42"))
    assert job.group == "acct:42"
    assert connection.hget(job.key, "svc_group") == b"acct:42"
    assert enqueue(connection, InternalRequest("diag.echo")).group is None


@pytest.mark.parametrize("group", ["", "a b", "x" * 65, "é", "a\n", "~", "*"])
def test_a_group_outside_its_alphabet_is_refused(connection: Redis, group: str) -> None:
    with pytest.raises(InvalidField, match="group"):
        enqueue(connection, InternalRequest("diag.echo", group=group))
    assert connection.dbsize() == 0


def test_the_dashboards_queues_view_shows_groups_per_lane(client: FlaskClient, connection: Redis) -> None:
    put(connection, "a", "b", "b", None)
    auth = {"Authorization": "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode()}
    rows = {q["name"]: q for q in client.get("/dashboard/0/data/queues.json", headers=auth).get_json()["queues"]}
    assert (rows["default"]["groups"], rows["default"]["count"], rows["low"]["groups"]) == (2, 4, 0)
    page = client.get("/dashboard/", headers=auth).get_data(as_text=True)
    assert '<th class="narrow">Groups</th>' in page and "<%= d.groups %>" in page
