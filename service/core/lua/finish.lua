-- Finish: store a plain job's success in one call, as RQ's handle_job_success would.
-- KEYS: job hash, started registry, execution hash, executions registry, worker hash,
--       worker executions set, claimed list, finished registry, result stream, dependents set,
--       the task's concurrency slots (or any unused key), metrics hash, dependencies set,
--       the job's ended channel (PUBLISH: wakes GET /jobs/<id>?wait=).
-- ARGV: job id, execution composite key, execution id, ended_at (RQ's ISO format),
--       result ttl (-1 = forever), finished registry score, working seconds,
--       the duration histogram's bucket bounds (a JSON list of strings, as the metrics hash names them),
--       N = the number of result stream arguments, those N field/value arguments, then the metrics:
--       started counter field, outcome counter field, histogram field prefix, duration in seconds.
-- The worker's state goes back to idle, as RQ's SimpleWorker sets it after a job.
-- Returns the number of dependents (the caller enqueues them through RQ).
local ttl = tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'status', 'finished', 'ended_at', ARGV[4], 'last_heartbeat', ARGV[4])
if ttl > 0 then
    redis.call('EXPIRE', KEYS[1], ttl)
    redis.call('EXPIRE', KEYS[10], ttl)
    redis.call('EXPIRE', KEYS[13], ttl)
else
    redis.call('PERSIST', KEYS[1])
end
redis.call('ZADD', KEYS[8], ARGV[6], ARGV[1])
local buckets = cjson.decode(ARGV[8])
local n = tonumber(ARGV[9])
local fields = {}
for i = 10, 9 + n do
    fields[#fields + 1] = ARGV[i]
end
local m = 10 + n
local histogram, seconds = ARGV[m + 2], ARGV[m + 3]
redis.call('HINCRBYFLOAT', KEYS[12], histogram .. 'sum', seconds)
redis.call('HINCRBY', KEYS[12], ARGV[m], 1)
redis.call('HINCRBY', KEYS[12], ARGV[m + 1], 1)
local s = tonumber(seconds)
for _, bound in ipairs(buckets) do
    if s <= tonumber(bound) then
        redis.call('HINCRBY', KEYS[12], histogram .. 'le=' .. bound, 1)
    end
end
redis.call('HINCRBY', KEYS[12], histogram .. 'count', 1)
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
redis.call('ZREM', KEYS[11], ARGV[1])
redis.call('HINCRBY', KEYS[5], 'successful_job_count', 1)
redis.call('HINCRBYFLOAT', KEYS[5], 'total_working_time', ARGV[7])
redis.call('HSET', KEYS[5], 'state', 'idle')
redis.call('PUBLISH', KEYS[14], 'finished')
return redis.call('SCARD', KEYS[10])
