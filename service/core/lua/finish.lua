-- Finish: store a plain job's success in one call, as RQ's handle_job_success would.
-- KEYS: job hash, started registry, execution hash, executions registry, worker hash,
--       worker executions set, claimed list, finished registry, result stream, dependents set,
--       the task's concurrency slots (or any unused key), metrics hash, dependencies set,
--       the task's slots in the job's group (or any unused key), the lane's held groups hash,
--       the job's ended channel (PUBLISH: wakes GET /jobs/<id>?wait=).
-- ARGV: job id, execution composite key, execution id, ended_at (RQ's ISO format),
--       result ttl (-1 = forever), finished registry score, working seconds,
--       N = the number of result stream arguments, those N field/value arguments, then the metrics:
--       started counter field, outcome counter field, the duration's histogram bucket field and sum
--       field, duration in seconds (service.core.metrics.observe's shape), then the job's group ('' for none),
--       then '1' when the job has dependencies ('' else) and '1' when the task has concurrency slots ('' else):
--       a key that cannot exist costs no command.
-- The worker's state goes back to idle, as RQ's SimpleWorker sets it after a job.
-- Returns the number of dependents (the caller enqueues them through RQ).
local ttl = tonumber(ARGV[5])
local m = 9 + tonumber(ARGV[8])
local dependents = redis.call('SCARD', KEYS[10])
redis.call('HSET', KEYS[1], 'status', 'finished', 'ended_at', ARGV[4])
redis.call('HDEL', KEYS[1], 'last_heartbeat')  -- RQ sets it to ended_at: a copy kept for result_ttl
if ttl > 0 then
    redis.call('EXPIRE', KEYS[1], ttl)
    if dependents > 0 then
        redis.call('EXPIRE', KEYS[10], ttl)
    end
    if ARGV[m + 6] == '1' then
        redis.call('EXPIRE', KEYS[13], ttl)
    end
else
    redis.call('PERSIST', KEYS[1])
end
redis.call('ZADD', KEYS[8], ARGV[6], ARGV[1])
local fields = {}
for i = 9, m - 1 do
    fields[#fields + 1] = ARGV[i]
end
redis.call('HINCRBY', KEYS[12], ARGV[m], 1)
redis.call('HINCRBY', KEYS[12], ARGV[m + 1], 1)
redis.call('HINCRBY', KEYS[12], ARGV[m + 2], 1)
redis.call('HINCRBYFLOAT', KEYS[12], ARGV[m + 3], ARGV[m + 4])
redis.call('XADD', KEYS[9], 'MAXLEN', '~', '10', '*', unpack(fields))
if ttl > 0 then
    redis.call('EXPIRE', KEYS[9], ttl)
else
    redis.call('PERSIST', KEYS[9])
end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[3])
redis.call('SREM', KEYS[6], ARGV[2])
redis.call('LREM', KEYS[7], 1, ARGV[1])
if ARGV[m + 7] == '1' then
    redis.call('ZREM', KEYS[11], ARGV[1])
end
if ARGV[m + 5] ~= '' then  -- its group's slot is free: the group is held no longer
    redis.call('ZREM', KEYS[14], ARGV[1])
    redis.call('HDEL', KEYS[15], ARGV[m + 5])
end
redis.call('HINCRBY', KEYS[5], 'successful_job_count', 1)
redis.call('HINCRBYFLOAT', KEYS[5], 'total_working_time', ARGV[7])
redis.call('HSET', KEYS[5], 'state', 'idle')
redis.call('PUBLISH', KEYS[16], 'finished')
return dependents
