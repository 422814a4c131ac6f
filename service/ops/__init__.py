"""Ops: what operators see and hook into: the event bus (job and schedule hooks), lane and worker monitoring,
Prometheus rendering, and the start-up shared by the worker and scheduler processes.

May import: service.core, service.tasks, service.jobs.
"""
