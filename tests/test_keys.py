"""The key module: RQ's key shapes as RQ's own objects name them, scripts that spell no key, RQ_KEY_PREFIX honoured."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from redis import Redis
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job
from rq.queue import Queue
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.worker import Worker
from rq_scheduler import Scheduler

from service.core import keys
from service.core.lua import SCRIPTS_DIR
from tests.helpers import wait_until
from tests.processes import Processes

ROOT = Path(__file__).resolve().parent.parent


def test_rq_key_shapes_are_the_ones_rq_objects_use(connection: Redis) -> None:
    job = Job.create("diag.echo", id="j1", connection=connection)
    execution = Execution("e1", "j1", connection)
    assert keys.queue_key("low") == Queue("low", connection=connection).key
    assert keys.job_key("j1") == job.key
    assert keys.worker_key("w1") == Worker(["low"], name="w1", connection=connection).key
    assert keys.started_key("low") == StartedJobRegistry("low", connection=connection).key
    assert keys.finished_key("low") == FinishedJobRegistry("low", connection=connection).key
    assert keys.executions_key("j1") == ExecutionRegistry("j1", connection=connection).key
    assert keys.EXECUTION_PREFIX + execution.composite_key == execution.key
    assert keys.results_key("j1") == Result.get_key("j1")
    assert keys.DEPENDENTS_SHAPE[0] + "j1" + keys.DEPENDENTS_SHAPE[1] == job.dependents_key
    assert keys.DEPENDENCIES_SHAPE[0] + "j1" + keys.DEPENDENCIES_SHAPE[1] == job.dependencies_key


def test_rq_scheduler_keys_match_rq_scheduler() -> None:
    assert keys.SCHEDULER_LOCK_KEY == Scheduler.scheduler_lock_key
    assert keys.SCHEDULED_JOBS_KEY == Scheduler.scheduled_jobs_key


def test_every_script_documents_its_keys_and_spells_none() -> None:
    scripts = sorted(SCRIPTS_DIR.glob("*.lua"))
    assert scripts
    for path in scripts:
        text = path.read_text()
        header = "\n".join(line for line in text.splitlines() if line.startswith("--"))
        assert "KEYS:" in header and "ARGV" in header and "Returns" in header, path.name
        assert not re.search(r"['\"](rq|svc):", text), f"{path.name} spells a key name"


def test_only_the_key_module_spells_key_names() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "service").rglob("*.py"))
        # compat.py quotes RQ's key shapes in its notes of what we reach into; it builds no key.
        if path not in (ROOT / "service/core/keys.py", ROOT / "service/core/compat.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"['\"](rq|svc):|\bsvc:", line)
    ]
    assert offenders == []


def test_a_changed_rq_key_prefix_is_used_end_to_end(connection: Redis, processes: Processes) -> None:
    alt = {"RQ_KEY_PREFIX": "alt"}
    enqueue = processes.start("enqueue", sys.executable, "-m", "service", "enqueue", "diag.echo", "7", env=alt)
    assert enqueue.wait(timeout=30) == 0, enqueue.output()
    job_id = json.loads(enqueue.output())["id"]
    assert connection.lrange("alt:queue:default", 0, -1) == [job_id.encode()]
    processes.worker("default", "--burst", env=alt)
    wait_until(lambda: connection.hget(f"alt:job:{job_id}", "status") == b"finished", timeout=30, what="the job")
    assert connection.xlen(f"alt:results:{job_id}") == 1
    assert connection.zscore("alt:finished:default", job_id) is not None
    assert connection.keys("rq:*") == []
