"""Parity with stock RQ: the same jobs, run by rq.SimpleWorker and by the service, leave the same state in Redis.

Each scenario runs twice on a real, emptied Redis: stock RQ (a plain Queue
with the JSON serializer, rq.SimpleWorker in burst mode) and the service
(POST /jobs, ServiceWorker in burst mode, without and with fork). What lands in Redis
(job hashes, registries, executions, results streams, the worker hash) and
what RQ's readers report (Job.fetch, latest_result(), rq-dashboard's JSON
routes) is compared item by item. Every difference must be listed below
with the reason it is there on purpose; a difference that is not listed,
as an RQ upgrade that changes its layout would make, fails the test.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue, Retry, SimpleWorker
from rq.serializers import JSONSerializer

from service.tasks.registry import REGISTRY
from service.workers.worker import WorkerOptions, make_worker
from tests import parity_tasks  # noqa: F401 - registers the parity.* tasks
from tests.api import Api
from tests.parity import ALWAYS, Item, Labels, differences, readback, snapshot, unexpected

WORKER = "parity-worker"
LANE = "default"


@dataclass
class Spec:
    """One job of a scenario, and how each side enqueues it."""

    label: str
    task: str
    args: list[Any] = field(default_factory=list)
    result_ttl: int | None = None  # None: the task's default (500 s on both sides)
    timeout: int | None = None
    retry: tuple[int, int] | None = None  # (max, interval seconds)
    depends_on: str | None = None  # the label of an earlier job

    def stock(self, queue: Queue, ids: dict[str, str]) -> str:
        spec = REGISTRY.get(self.task)
        job = queue.enqueue_call(
            spec.func,
            args=self.args,
            result_ttl=spec.result_ttl_seconds if self.result_ttl is None else self.result_ttl,
            failure_ttl=spec.failure_ttl_seconds,
            timeout=self.timeout or spec.timeout_seconds,
            retry=Retry(max=self.retry[0], interval=self.retry[1]) if self.retry else None,
            depends_on=ids[self.depends_on] if self.depends_on else None,
        )
        return job.id

    def ours(self, api: Api, ids: dict[str, str]) -> str:
        body: dict[str, Any] = {"task": self.task, "args": self.args, "queue": LANE}
        if self.result_ttl is not None:
            body["result_ttl"] = self.result_ttl
        if self.timeout is not None:
            body["timeout"] = self.timeout
        if self.retry is not None:
            body["retry"] = {"max": self.retry[0], "backoff": [self.retry[1]]}
        if self.depends_on is not None:
            body["depends_on"] = [ids[self.depends_on]]
        return str(api.enqueue(**body)["id"])


@dataclass
class Scenario:
    name: str
    jobs: list[Spec]
    max_jobs: int | None = None  # None: run until the lane is empty


PARENT_AND_CHILD = [Spec("<job>", "parity.ok", [1]), Spec("<child>", "parity.ok", [2], depends_on="<job>")]
SCENARIOS = [
    Scenario("success", [Spec("<job>", "parity.ok", [1])]),
    Scenario("failure", [Spec("<job>", "parity.fail", [1])]),
    Scenario("retry at once", [Spec("<job>", "parity.fail", [1], retry=(2, 0))], max_jobs=1),
    Scenario("retry after an interval", [Spec("<job>", "parity.fail", [1], retry=(1, 60))], max_jobs=1),
    Scenario("retries spent", [Spec("<job>", "parity.fail", [1], retry=(1, 0))]),
    Scenario("the job returns Retry", [Spec("<job>", "parity.ask_retry")], max_jobs=1),
    Scenario("timeout", [Spec("<job>", "parity.slow", [3], timeout=1)]),
    Scenario("dependents, parent run", PARENT_AND_CHILD, max_jobs=1),
    Scenario("dependents, both run", PARENT_AND_CHILD),
    Scenario("result_ttl 0", [Spec("<job>", "parity.ok", [1], result_ttl=0)]),
    Scenario("result_ttl -1 (kept forever)", [Spec("<job>", "parity.forever", [1])]),
    Scenario("result_ttl N", [Spec("<job>", "parity.ok", [1], result_ttl=30)]),
]  # fmt: skip


@pytest.fixture
def api(client: FlaskClient) -> Api:
    return Api(client)


@pytest.fixture
def kept_signal_handlers() -> Iterator[None]:
    """Both workers install their signal handlers in this process; put pytest's back afterwards."""
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    yield
    for sig, handler in kept.items():
        signal.signal(sig, handler)


def run_stock(connection: Redis, scenario: Scenario) -> dict[str, str]:
    queue = Queue(LANE, connection=connection, serializer=JSONSerializer)
    ids: dict[str, str] = {}
    for spec in scenario.jobs:
        ids[spec.label] = spec.stock(queue, ids)
    worker = SimpleWorker([queue], connection=connection, serializer=JSONSerializer, name=WORKER)
    worker.work(burst=True, max_jobs=scenario.max_jobs)
    return ids


def run_ours(connection: Redis, api: Api, scenario: Scenario, fork: bool) -> dict[str, str]:
    ids: dict[str, str] = {}
    for spec in scenario.jobs:
        ids[spec.label] = spec.ours(api, ids)
    options = WorkerOptions(lanes=(LANE,), fork=fork, burst=True, with_scheduler=False, name=WORKER)
    make_worker(connection, options).work(burst=True, max_jobs=scenario.max_jobs)
    return ids


def observe(connection: Redis, client: FlaskClient, ids: dict[str, str]) -> dict[Item, Any]:
    labels = Labels({job_id: label for label, job_id in ids.items()})
    state = snapshot(connection, labels, WORKER)
    state.update(readback(connection, client, labels, ids))
    return state


@pytest.mark.parametrize("fork", [False, True], ids=["no fork", "fork"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_the_service_stores_what_stock_rq_stores(
    connection: Redis, client: FlaskClient, api: Api, scenario: Scenario, fork: bool, kept_signal_handlers: None
) -> None:
    stock = observe(connection, client, run_stock(connection, scenario))
    connection.flushdb()
    ours = observe(connection, client, run_ours(connection, api, scenario, fork))
    assert unexpected(differences(stock, ours), ALWAYS) == {}
