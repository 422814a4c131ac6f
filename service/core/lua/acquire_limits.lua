-- Acquire limits: may a job of a limited task start now? (per-task concurrency, per-group concurrency,
-- start rate)
-- KEYS: running zset (job ids, scored by slot expiry), starts zset (recent starts, scored by start time),
--       the task's running zset for the job's group (or any unused key).
-- ARGV: job id, concurrency (0 = none), how long a slot is held at most (s), max starts (0 = none),
--       period (s), group concurrency (0 = none).
-- Time is Redis's (TIME), so the window and the slots hold across workers whose clocks disagree.
-- Returns '0' when the job may start (its slots and its start are recorded), else the seconds to
-- wait: until the oldest start leaves the window, '-1' when the task's concurrency is the limit,
-- '-2' when its group's is (the caller picks a short retry).
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local job_id = ARGV[1]
local concurrency = tonumber(ARGV[2])
local max_starts = tonumber(ARGV[4])
local period = tonumber(ARGV[5])
local group_concurrency = tonumber(ARGV[6])
local function full(running, cap)
    redis.call('ZREMRANGEBYSCORE', running, '-inf', now)
    return redis.call('ZSCORE', running, job_id) == false and redis.call('ZCARD', running) >= cap
end
if concurrency > 0 and full(KEYS[1], concurrency) then
    return '-1'
end
if group_concurrency > 0 and full(KEYS[3], group_concurrency) then
    return '-2'
end
if max_starts > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - period)
    if redis.call('ZCARD', KEYS[2]) >= max_starts then
        local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
        return tostring(tonumber(oldest[2]) + period - now)
    end
    redis.call('ZADD', KEYS[2], now, job_id .. ':' .. string.format('%.6f', now))
    redis.call('PEXPIRE', KEYS[2], math.ceil(period * 1000) + 1000)
end
if concurrency > 0 then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), job_id)
end
if group_concurrency > 0 then
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), job_id)
end
return '0'
