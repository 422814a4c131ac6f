"""Reaper: bring back the jobs of workers that died (SIGKILL, OOM, lost machine).

Every worker writes a liveness key (keys.alive_key) with a short TTL from a
heartbeat thread. The reaper (run by every worker on a timer, one at a time
through a lock) looks at each worker that holds claimed jobs: if its liveness
key is gone, each job in its claimed list is recovered:

- not yet started (killed between claim and start, or prefetched and not run
  or its outcome not stored yet: service.workers.prefetch): back to the front
  of its lane, in the order they were claimed, nothing counted;
- started: a *crash*. Each job has a crash-redelivery allowance
  (`--crash-retries`, default 3) separate from its own retry policy, so a
  crash alone never fails a job that would have succeeded. Past the
  allowance the job's retry policy is used, and when that is spent too the
  job fails with a reason that says its worker died (a poison job: it is
  counted by task in keys.POISON_JOBS_KEY).

Detection bound: liveness TTL + reaper period (production: 20 s + 10 s, so a
killed worker's job is back in its lane within 30 s; the promise is 60 s).
"""

from __future__ import annotations

import logging

from redis import Redis
from rq.job import JobStatus
from rq.job_lifecycle import record_job_failure

from service.core import keys, metrics
from service.core.keys import CLAIMERS_KEY, alive_key, claimed_key
from service.core.lanes import LANES
from service.core.lease import Lease
from service.core.outage import REDIS_DOWN, refuses_writes
from service.jobs import batches
from service.jobs.damage import is_job_id
from service.jobs.model import ServiceJob, ServiceQueue
from service.workers import limits, poison
from service.workers.claim import Claimer

log = logging.getLogger("service.worker")

# One reaper pass at a time: the lease lasts this long and is renewed before each dead
# worker's list, so a reaper killed mid-pass holds up the others for seconds, not a round.
LOCK_SECONDS = 5
CRASHES_FIELD = "crashes"
DEFAULT_CRASH_RETRIES = 3
ENDED = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}


class Reaper:
    """Recovers jobs claimed by dead workers, and jobs whose work horse died."""

    def __init__(self, connection: Redis, *, crash_retries: int = DEFAULT_CRASH_RETRIES) -> None:
        self.connection = connection
        self.crash_retries = crash_retries
        self._claimer = Claimer(connection, "reaper")
        self._lease = Lease(connection, keys.REAPER_LOCK_KEY, LOCK_SECONDS * 1000)

    def forget(self, worker_name: str) -> None:
        """Drop a worker that stopped cleanly (its claimed list is empty)."""
        with self.connection.pipeline() as pipe:
            pipe.delete(alive_key(worker_name))
            pipe.srem(CLAIMERS_KEY, worker_name)
            pipe.execute()

    def reap(self) -> int:
        """Recover the claimed jobs of every dead worker (unless another reaper is at it); return how many."""
        if not self._lease.acquire_or_renew():
            return 0
        recovered = 0
        try:
            for raw in self.connection.smembers(CLAIMERS_KEY):
                name = raw.decode("utf-8", "surrogateescape")
                if not self._lease.acquire_or_renew():  # lost (a long pause): another reaper carries on
                    break
                try:
                    recovered += self._reap_worker(name)
                except REDIS_DOWN:
                    raise
                except Exception as exc:  # one worker's list must not keep the others' jobs from coming back
                    if refuses_writes(exc):  # Redis is full: nothing can be recovered now
                        raise
                    log.exception("Reaper: could not go through the claims of worker %r", name[:100])
        finally:
            self._lease.release()
        return recovered

    def _reap_worker(self, name: str) -> int:
        """Recover every job claimed by worker `name` if it is dead; return how many."""
        if self.connection.exists(alive_key(name)):
            return 0
        key = claimed_key(name)
        reason = f"worker {name} died (no heartbeat) while running this job"
        jobs = self._claimer.claimed(key)
        for job_id in reversed(jobs):  # each goes back to the front: the last first keeps their order
            try:
                self.recover(job_id, key, reason)
            except REDIS_DOWN:
                raise
            except Exception as exc:  # whatever the job holds, it leaves the list: failed alone
                if refuses_writes(exc):
                    raise
                log.exception("Reaper: job %r of worker %s could not be recovered", job_id[:100], name)
                poison.fail(self.connection, key, job_id, None, f"{type(exc).__name__}: {exc}", None, name)
        if not self.connection.llen(key):
            self.connection.srem(CLAIMERS_KEY, name)
        return len(jobs)

    def recover(self, job_id: str, key: str, reason: str) -> str:
        """Bring back one claimed job whose runner died; return what was done."""
        if not is_job_id(job_id):
            poison.discard(self.connection, key, job_id, None, None, "reaper")
            return "discarded"
        job = ServiceJob.fetch_many([job_id], connection=self.connection)[0]
        if job is None or job.get_status(refresh=False) in ENDED:
            self.connection.lrem(key, 1, job_id)  # gone, or its outcome is already stored
            return "dropped"
        if job.damage or job.origin not in LANES:  # it cannot run: no crash allowance, no retry
            message = f"JobDamaged: the stored job is damaged ({job.damage}); not run"
            poison.fail(self.connection, key, job_id, None, message, None, "reaper")
            return "failed"
        lane = job.origin
        if job.get_status(refresh=False) != JobStatus.STARTED:
            self._claimer.requeue(job_id, lane, key=key)
            log.warning("Reaper: job %s was claimed but not started; back at the front of %s", job_id, lane)
            return "requeued"
        crashes = int(self.connection.hincrby(job.key, CRASHES_FIELD, 1))
        spec = job.spec
        with self.connection.pipeline() as pipe:
            _forget_execution(self.connection, job, pipe)
            limits.release(pipe, spec, job_id, job.group, job.origin)
            task = job.task_name
            if crashes <= self.crash_retries:
                metrics.count(pipe, "jobs_redelivered", task, lane)
                pipe.execute()
                self._claimer.requeue(job_id, lane, key=key)
                log.warning("Reaper: %s; redelivered (crash %d of %d allowed)", reason, crashes, self.crash_retries)
                return "requeued"
            pipe.lrem(key, 1, job_id)
            if job.retries_left:
                metrics.count(pipe, "jobs_retried", task, lane)
                job.retry(ServiceQueue(lane, connection=self.connection), pipe)
                pipe.execute()
                log.warning("Reaper: %s; crash %d, retried by its retry policy", reason, crashes)
                return "retried"
            message = f"WorkerDied: {reason}; {crashes} crashes, no attempts left (poison job?)"
            record_job_failure(job, message, pipe)
            metrics.count(pipe, "jobs_failed", task, lane)
            batches.end(pipe, job.id, job.batch_id, "failed")
            pipe.hincrby(keys.POISON_JOBS_KEY, task, 1)
            pipe.execute()
        log.error("Reaper: job %s failed: %s", job_id, message)
        return "failed"


def _forget_execution(connection: Redis, job: ServiceJob, pipe: object) -> None:
    """Remove the dead execution's entries from the lane's started registry."""
    registry = keys.started_key(job.origin)
    prefix = f"{job.id}:".encode()
    for member in connection.zrange(registry, 0, -1):
        if member.startswith(prefix):
            pipe.zrem(registry, member)  # type: ignore[attr-defined]
