"""Schedules: recurring work: specs and cron, storage, firing runs exactly once per due time,
the scheduler process, declared files, and the domain operations the API and CLI call.

May import: service.core, service.tasks, service.jobs, service.ops.
"""
