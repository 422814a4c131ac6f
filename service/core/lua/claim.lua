-- Claim: take the head of the first non-empty lane into a worker's claimed list, and start it.
-- KEYS: claimed list, claimers set, worker hash, worker executions set, then per lane tried,
--       in order: lane list, waiting zset, doorbell list, started registry (RQ's wip).
-- ARGV: worker name, execution id, now (RQ's ISO format, for started_at), execution ttl (s),
--       job hash prefix, execution hash prefix, executions registry prefix.
-- Time is Redis's (TIME): held-back jobs fall due, and executions expire, on the clock every
-- process shares, whatever the worker host's clock says.
-- 1. Waiting (limited) jobs whose time has come, up to 100 a lane, go back to the front of their lane.
-- 2. The first non-empty lane's head moves into the claimed list (LMOVE: atomic, so the id is
--    never only in this script's hands); its doorbell token is consumed. Empty lanes' doorbells
--    are cleared: their tokens are stale.
-- 3. A queued job is marked started in the same call, as RQ's prepare_execution and
--    prepare_job_execution would (status, started_at, worker_name, attempts, execution hash and
--    registries, started registry, worker state): claim and start cost one round trip.
-- Returns {id, lane number (1 = the first tried), job hash fields, 1 if started else 0, Redis's time},
-- or {false, earliest waiting time or -1, Redis's time} (times in epoch seconds, as strings).
local time = redis.call('TIME')
local now_text = time[1] .. '.' .. string.format('%06d', tonumber(time[2]))
local now = tonumber(now_text)
local worker, execution_id, now_iso, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local job_prefix, execution_prefix, executions_prefix = ARGV[5], ARGV[6], ARGV[7]
local lanes = (#KEYS - 4) / 4
local function lane_key(n, which) return KEYS[4 + 4 * (n - 1) + which] end

local earliest = -1
for n = 1, lanes do
    local queue, waiting = lane_key(n, 1), lane_key(n, 2)
    local due = redis.call('ZRANGEBYSCORE', waiting, '-inf', now, 'LIMIT', 0, 100)
    for _, id in ipairs(due) do
        redis.call('ZREM', waiting, id)
        redis.call('LPUSH', queue, id)
    end
    local next_due = redis.call('ZRANGE', waiting, 0, 0, 'WITHSCORES')
    if next_due[2] and (earliest < 0 or tonumber(next_due[2]) < earliest) then
        earliest = tonumber(next_due[2])
    end
end
for n = 1, lanes do
    local id = redis.call('LMOVE', lane_key(n, 1), KEYS[1], 'LEFT', 'RIGHT')
    if id then
        redis.call('SADD', KEYS[2], worker)
        redis.call('LPOP', lane_key(n, 3))
        local job_key = job_prefix .. id
        local started = 0
        if redis.call('HGET', job_key, 'status') == 'queued' then
            started = 1
            local composite = id .. ':' .. execution_id
            redis.call('HSET', job_key, 'status', 'started', 'started_at', now_iso, 'worker_name', worker,
                       'last_heartbeat', now_iso)
            redis.call('HINCRBY', job_key, 'attempts', 1)
            redis.call('PERSIST', job_key)
            local execution_key = execution_prefix .. composite
            redis.call('HSET', execution_key, 'id', execution_id, 'job_id', id, 'created_at', now_text,
                       'last_heartbeat', now_text, 'worker_name', worker)
            redis.call('EXPIRE', execution_key, ttl)
            local executions_key = executions_prefix .. id
            redis.call('ZADD', executions_key, now + ttl + 60, execution_id)
            redis.call('EXPIRE', executions_key, ttl + 60)
            redis.call('ZADD', lane_key(n, 4), now + ttl, composite)
            redis.call('SADD', KEYS[4], composite)
            redis.call('EXPIRE', KEYS[4], ttl + 60)
            redis.call('HSET', KEYS[3], 'state', 'busy')
        end
        return {id, n, redis.call('HGETALL', job_key), started, now_text}
    end
    redis.call('DEL', lane_key(n, 3))
end
return {false, tostring(earliest), now_text}
