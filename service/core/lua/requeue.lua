-- Requeue: put a claimed job back at the front of its lane, queued, and wake a worker.
-- KEYS: claimed list, lane list, lane doorbell, job hash.
-- ARGV: job id.
-- Returns 1. The job's execution entries are the caller's to clean up.
redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], 1)
if redis.call('EXISTS', KEYS[4]) == 1 then
    redis.call('HSET', KEYS[4], 'status', 'queued')
end
return 1
