"""Ops: what operators see and hook into: the event bus (job and schedule hooks), lane and worker monitoring,
gauges, Prometheus rendering, the dashboard charts' per-minute rollup, and the start-up shared by the worker and
scheduler processes.

May import: service.core, service.tasks, service.jobs.
"""
