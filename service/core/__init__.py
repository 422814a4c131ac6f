"""Core: what every process shares and nothing else depends on: settings, the Redis connection,
errors, Redis key names and Lua scripts, lanes, metric counters, logging, outage backoff and the lease.

May import: the standard library, redis, rq. Never another `service` package.
"""
