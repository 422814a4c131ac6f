"""Workers: RQ's worker as the service runs it: claiming from the lanes, running jobs with or
without a fork, storing outcomes, limits, warm shutdown, heartbeats and the reaper, pools.

May import: service.core, service.tasks, service.jobs, service.ops. Never Flask, pydantic or
service.schedules: a worker stays small and starts fast.
"""
