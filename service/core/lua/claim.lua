-- Claim: take a job from the first lane that has one into a worker's claimed list, and start it.
-- KEYS: claimed list, claimers set, worker hash, worker executions set, metrics hash, then per lane tried,
--       in order: lane list, waiting zset, doorbell list, started registry (RQ's wip),
--       group turns list, held groups hash.
-- ARGV: worker name, execution id, now (RQ's ISO format, for started_at), execution ttl (s),
--       job hash prefix, execution hash prefix, executions registry prefix,
--       the lane head's turn, the separator between a turns key and a group, the job hash's group
--       field, the ungrouped group, the wait histogram's bounds (space-separated, as the metrics hash
--       names them), then per lane tried its wait histogram's field prefix (`job_wait_seconds|<lane>|`).
-- Time is Redis's (TIME): held-back jobs fall due, and executions expire, on the clock every
-- process shares, whatever the worker host's clock says.
-- 1. Waiting (limited) jobs whose time has come, up to 100 a lane, go back to the front of their lane.
-- 2. In a lane whose groups take turns (the turns list exists), the next group in turn gives its
--    oldest job: its id leaves the group's index and the lane list (LREM: the lane list holds
--    every waiting job, as RQ counts them) and goes into the claimed list. A group held at a
--    task's group cap passes its turn; stale index entries (a job canceled or taken as the lane
--    head) are skipped. The lane head's turn, or no turns list, takes the lane's head (LMOVE):
--    jobs RQ itself puts in a lane (retries, delayed jobs, requeues) are never left behind; a
--    head that also heads its group's index leaves that index too.
--    Either way the id is never only in this script's hands. The lane's doorbell token is
--    consumed; empty lanes' doorbells are cleared: their tokens are stale.
-- 3. A queued job is marked started in the same call, as RQ's prepare_execution and
--    prepare_job_execution would (status, started_at, worker_name, attempts, execution hash and
--    registries, started registry, worker state): claim and start cost one round trip. Its wait,
--    enqueue (enqueued_at) to start (Redis's TIME), goes into the lane's wait histogram as
--    service.core.metrics.observe stores one: its bucket and the sum.
-- Returns {id, lane number (1 = the first tried), job hash fields, 1 if started else 0, Redis's time},
-- or {false, earliest waiting time or -1, Redis's time} (times in epoch seconds, as strings).
local time = redis.call('TIME')
local now_text = time[1] .. '.' .. string.format('%06d', tonumber(time[2]))
local now = tonumber(now_text)
local worker, execution_id, now_iso, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local job_prefix, execution_prefix, executions_prefix = ARGV[5], ARGV[6], ARGV[7]
local lane_head, separator, group_field, ungrouped = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local wait_bounds = ARGV[12]
local WORKER_KEYS = 5
local PER_LANE = 6
local MAX_TURNS = 32
local lanes = (#KEYS - WORKER_KEYS) / PER_LANE
local function lane_key(n, which) return KEYS[WORKER_KEYS + PER_LANE * (n - 1) + which] end

-- Epoch seconds of an ISO 8601 UTC time as RQ writes it (2026-12-07T06:03:47.123456Z), or nil.
local function epoch(iso)
    local y, mo, d, h, mi, sec = string.match(iso or '', '^(%d+)-(%d+)-(%d+)T(%d+):(%d+):([%d.]+)')
    if not y then
        return nil
    end
    y, mo = tonumber(y), tonumber(mo)
    if mo <= 2 then
        y = y - 1
    end
    local era = math.floor(y / 400)
    local yoe = y - era * 400
    local doy = math.floor((153 * ((mo + 9) % 12) + 2) / 5) + tonumber(d) - 1
    local days = era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
    return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + (tonumber(sec) or 0)
end

-- Count a started job's wait (from its enqueued_at) in lane n's wait histogram.
local function observe_wait(n, enqueued_at)
    local enqueued = epoch(enqueued_at)
    if not enqueued then
        return
    end
    local wait = math.max(0, now - enqueued)
    local bucket = '+Inf'
    for bound in string.gmatch(wait_bounds, '%S+') do
        if wait <= tonumber(bound) then
            bucket = bound
            break
        end
    end
    local prefix = ARGV[12 + n]
    redis.call('HINCRBY', KEYS[5], prefix .. 'in=' .. bucket, 1)
    redis.call('HINCRBYFLOAT', KEYS[5], prefix .. 'sum', string.format('%.6f', wait))
end

-- The group at the turns list's tail (the one whose turn it was) has no indexed job left.
local function leave_turns(turns)
    redis.call('RPOP', turns)
    if redis.call('LLEN', turns) == 1 then  -- only the lane head's turn is left
        redis.call('DEL', turns)
    end
end

-- A group's turn: its oldest indexed job still in the lane, taken out of the lane; stale entries
-- (a job canceled or taken as the lane head) are dropped on the way, `budget` of them at most.
local function group_turn(queue, turns, group, budget)
    local index = turns .. separator .. group
    for _ = 1, budget do
        local id = redis.call('LPOP', index)
        if redis.call('LLEN', index) == 0 then
            leave_turns(turns)
        end
        if not id or redis.call('LREM', queue, 1, id) == 1 then
            return id
        end
    end
    return nil
end

-- The next turn of lane n: an id taken out of the lane, true for the lane head's turn, or nil
-- when the lane's groups take no turns.
local function next_turn(n)
    local queue, turns, held = lane_key(n, 1), lane_key(n, 5), lane_key(n, 6)
    local group = redis.call('LMOVE', turns, turns, 'LEFT', 'RIGHT')
    if not group then
        return nil
    end
    for turn = 1, math.min(redis.call('LLEN', turns), MAX_TURNS) do
        if turn > 1 then
            group = redis.call('LMOVE', turns, turns, 'LEFT', 'RIGHT')
        end
        if not group or group == lane_head then
            return true
        end
        local held_until = tonumber(redis.call('HGET', held, group) or '0')
        if held_until <= now then
            if held_until > 0 then
                redis.call('HDEL', held, group)
            end
            local id = group_turn(queue, turns, group, MAX_TURNS)
            if id then
                return id
            end
        end
    end
    return true
end

-- The lane head's turn took `id`: if it heads its group's index, it leaves it (no stale entry left).
local function unindex(turns, id)
    local group = redis.call('HGET', job_prefix .. id, group_field) or ungrouped
    local index = turns .. separator .. group
    if redis.call('LINDEX', index, 0) == id then
        redis.call('LPOP', index)
        if redis.call('LLEN', index) == 0 then
            redis.call('LREM', turns, 1, group)
            if redis.call('LLEN', turns) == 1 then
                redis.call('DEL', turns)
            end
        end
    end
end

-- A lane that is empty while its turns list exists: what the indexes hold is stale.
local function drop_turns(turns)
    for _, group in ipairs(redis.call('LRANGE', turns, 0, -1)) do
        redis.call('DEL', turns .. separator .. group)
    end
    redis.call('DEL', turns)
end

-- Lane n's earliest waiting time (or nil); due jobs, up to 100, go back to the front of the lane first.
-- One command for a lane with nothing due, the usual case.
local function promote_due(n)
    local queue, waiting = lane_key(n, 1), lane_key(n, 2)
    local next_due = redis.call('ZRANGE', waiting, 0, 0, 'WITHSCORES')
    if not next_due[2] or tonumber(next_due[2]) > now then
        return next_due[2] and tonumber(next_due[2])
    end
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', waiting, '-inf', now, 'LIMIT', 0, 100)) do
        redis.call('ZREM', waiting, id)
        redis.call('LPUSH', queue, id)
    end
    next_due = redis.call('ZRANGE', waiting, 0, 0, 'WITHSCORES')
    return next_due[2] and tonumber(next_due[2])
end

local earliest = -1
for n = 1, lanes do
    local due = promote_due(n)
    if due and (earliest < 0 or due < earliest) then
        earliest = due
    end
end
for n = 1, lanes do
    local turn = next_turn(n)
    local id
    if type(turn) == 'string' then
        id = turn
        redis.call('RPUSH', KEYS[1], id)
    else
        id = redis.call('LMOVE', lane_key(n, 1), KEYS[1], 'LEFT', 'RIGHT')
        if turn and id then
            unindex(lane_key(n, 5), id)
        elseif turn then
            drop_turns(lane_key(n, 5))
        end
    end
    if id then
        redis.call('SADD', KEYS[2], worker)
        redis.call('LPOP', lane_key(n, 3))
        local job_key = job_prefix .. id
        local fields = redis.call('HGETALL', job_key)
        local job = {}
        for i = 1, #fields, 2 do
            job[fields[i]] = fields[i + 1]
        end
        local started = 0
        if job['status'] == 'queued' then
            started = 1
            local composite = id .. ':' .. execution_id
            local attempts = job['attempts'] or '0'
            if not string.match(attempts, '^-?%d+$') then  -- damaged: HINCRBY refuses it, as RQ's would
                redis.call('HINCRBY', job_key, 'attempts', 1)
            end
            local changed = {'status', 'started', 'started_at', now_iso, 'worker_name', worker,
                             'last_heartbeat', now_iso, 'attempts', tostring(tonumber(attempts) + 1)}
            redis.call('HSET', job_key, unpack(changed))
            redis.call('PERSIST', job_key)
            for _, value in ipairs(changed) do  -- the reply's fields as the hash holds them now (last one wins)
                fields[#fields + 1] = value
            end
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
            observe_wait(n, job['enqueued_at'])
        end
        return {id, n, fields, started, now_text}
    end
    redis.call('DEL', lane_key(n, 3))
end
return {false, tostring(earliest), now_text}
