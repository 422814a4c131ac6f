"""Pool: several worker processes under one command (`worker.py --pool N`), on RQ's WorkerPool.

RQ's pool forks its children and respawns any that exit (a crash, or a
worker restarting itself after --max-jobs or --max-memory-mb); on SIGTERM it
stops them and waits. Its children are our ServiceWorkers, built from the
same options, each with its own Redis client.
"""

from __future__ import annotations

from multiprocessing.context import ForkProcess
from typing import Any

from redis import Redis
from rq.worker_pool import WorkerPool

from service.jobs.model import ServiceJob, ServiceQueue
from service.workers.worker import ServiceWorker, WorkerOptions, run_worker


class ServiceWorkerPool(WorkerPool):
    """RQ's WorkerPool whose children run ServiceWorkers with the command's options."""

    def __init__(self, connection: Redis, redis_url: str, options: WorkerOptions, size: int) -> None:
        super().__init__(
            list(options.lanes),
            connection=connection,
            num_workers=size,
            worker_class=ServiceWorker,
            job_class=ServiceJob,
            queue_class=ServiceQueue,
        )
        self.redis_url = redis_url
        self.options = options

    def get_worker_process(self, name: str, burst: bool, _sleep: float = 0, logging_level: str = "INFO") -> Any:
        options = WorkerOptions(**{**vars(self.options), "name": name})
        return ForkProcess(target=run_worker, args=(self.redis_url, options), name=f"worker {name}")
