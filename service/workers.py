"""Workers: RQ's worker as the service runs it (JSON jobs, registered tasks only)."""

from __future__ import annotations

from typing import Any

from rq.serializers import JSONSerializer
from rq.worker import Worker

from service.queues import ServiceJob, ServiceQueue


class ServiceWorker(Worker):
    """An RQ worker that runs ServiceJobs from ServiceQueues."""

    job_class = ServiceJob
    queue_class = ServiceQueue

    def __init__(self, queues: Any, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", JSONSerializer)
        kwargs.setdefault("job_class", ServiceJob)
        kwargs.setdefault("queue_class", ServiceQueue)
        super().__init__(queues, **kwargs)
