"""Jobs: the job model (RQ's Job and Queue, JSON only), enqueueing, the job hash template and writer, the request
schemas, and reading, listing, cancelling and requeueing jobs.

May import: service.core, service.tasks.
"""
