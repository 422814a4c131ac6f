-- Work: a worker's one call per job (or per batch of prefetched jobs): store the outcomes of the jobs it ran
-- (when given), add the counters it kept (when due), and claim and start its next job (when lanes are given).
-- KEYS: claimed list, claimers set, worker hash, worker executions set, metrics hash; then 12 finish keys per
--       outcome: job hash, started registry, execution hash, executions registry, finished
--       registry, result stream, dependents set, the task's concurrency slots (or any unused key),
--       dependencies set, the task's slots in the job's group (or any unused key), the lane's held
--       groups hash, the job's ended channel (PUBLISH: wakes GET /jobs/<id>?wait=); then per lane tried,
--       in order: lane list, waiting zset, doorbell list, started registry (RQ's wip), group turns list,
--       held groups hash.
-- ARGV: 1 worker name, 2 the state the worker hash holds ('' unknown), 3 the counters to add ('' none, else
--       lines `<kind>\t<amount>\t<field>\n`: kind m/M the metrics hash, w/W the worker hash, the upper
--       case a float), 4 '1' to add them whatever is claimed (else only when nothing is: the counters
--       are exact once the lanes are drained), 5 '1' to add the worker to the claimers set (its first
--       claim), 6 the number of outcomes, 7 the number of their arguments F, then:
--       per outcome, its number of arguments, then: job id, execution composite key, execution id, ended_at
--       (RQ's ISO format), result ttl (-1 = forever), finished registry score, the job's group ('' for none),
--       '1' when the job has dependencies ('' else), '1' when the task has concurrency slots ('' else) (a key
--       that cannot exist costs no command), '1' when the execution's records were written (by the
--       heartbeat: a job still running at its next beat; '' else), started_at ('' when the claim marked it
--       started; else it is a prefetched job, run without being marked started: its start is stored with its
--       outcome), its attempts (a prefetched job's, '' else), then the result stream's field/value arguments;
--       claim: execution id, now (RQ's ISO format, for started_at), execution ttl (s), '1' to look
--       for held-back jobs due before claiming (else only when no lane has a job), the number of the
--       lane (in this order) the worker's last job came from (1 if none), how many more jobs to prefetch from
--       the claimed job's lane (0: none), and '' to claim, or the id of a prefetched job of the first lane
--       that runs now to mark started instead (it ran past the bound of its batch, or leaves the fast path).
-- Returns {the dependents of each finished job, 1 if the counters were added else 0, claim}
-- where claim is false without lanes, {id, lane number (1 = the first tried), job hash fields,
-- 1 if started else 0, prefetched {id, job hash fields, ...}, Redis's time} or {false, earliest waiting time
-- or -1, Redis's time} (times in epoch seconds, as strings).
--
-- Finish (a plain job's success, as RQ's handle_job_success would store it): status finished and
-- ended_at (not last_heartbeat, a copy of ended_at kept for result_ttl), the job's keys expire with its
-- result ttl, the finished registry, the result stream entry, the started registry entry and the
-- execution's records (if written) gone, the claimed list and the task's slots left; its group is held
-- no longer. A prefetched job's outcome also stores its start (started_at, worker_name, attempts), unless it
-- is no longer queued (canceled or deleted while it ran): then it only leaves the claimed list.
--
-- Claim: time is Redis's (TIME): held-back jobs fall due, and executions expire, on the clock every
-- process shares, whatever the worker host's clock says.
-- 1. Waiting (limited) jobs whose time has come, up to 100 a lane, go back to the front of their lane
--    (looked for when the caller asks, at most every ~100 ms while jobs keep coming, and always
--    before reporting the lanes empty).
-- 2. In a lane whose groups take turns (the turns list exists), the next group in turn gives its
--    oldest job: its id leaves the group's index and the lane list (LREM: the lane list holds
--    every waiting job, as RQ counts them) and goes into the claimed list. A group held at a
--    task's group cap passes its turn; stale index entries (a job canceled or taken as the lane
--    head) are skipped. The lane head's turn, or no turns list, takes the lane's head (LMOVE):
--    jobs RQ itself puts in a lane (retries, delayed jobs, requeues) are never left behind; a
--    head that also heads its group's index leaves that index too.
--    Either way the id is never only in this script's hands. The lane's doorbell token is
--    consumed; when no lane has a job, their doorbells are cleared: their tokens are stale.
-- 3. Prefetch (when asked, in a lane whose groups take no turns): up to that many more jobs of the same lane (up to
--    the first job of a batch: those are claimed one at a time, as their jobs may wait for each other) go
--    into the claimed list, not started: they read as queued until their outcome (or their start, see
--    ARGV) is stored, and a dead worker's are put back at the front of their lane (service.workers.reaper).
-- 4. A queued job is marked started in the same call, as RQ's prepare_execution and
--    prepare_job_execution would (status, started_at, worker_name, attempts, started registry): claim
--    and start cost one round trip. RQ's execution records (execution hash, the job's executions
--    registry, the worker's executions set) and the job's last_heartbeat are written by the worker's
--    heartbeat for a job still running at its next beat (service.workers.heartbeat): a short job never has them, as a short
--    job never shows on Sidekiq's Busy page.
-- The worker hash's state is written only when it changes: busy once a job starts, idle once none runs.
local worker, known_state, counters = ARGV[1], ARGV[2], ARGV[3]
local flush_always, register = ARGV[4] == '1', ARGV[5] == '1'
local finishes, finish_args = tonumber(ARGV[6]), tonumber(ARGV[7])
local WORKER_KEYS = 5
local FINISH_KEYS = 12
local PER_LANE = 6
local MAX_TURNS = 32
local C = 7 + finish_args  -- ARGV[C + i]: the i-th claim argument
local LANE0 = WORKER_KEYS + FINISH_KEYS * finishes
local lanes = (#KEYS - LANE0) / PER_LANE

-- One outcome, its keys from KEYS[ko + 1] and arguments from ARGV[ao + 1] (the last at ARGV[last]): returns the
-- number of dependents (the caller enqueues them through RQ).
local function finish(ko, ao, last)
    local function key(i) return KEYS[ko + i] end
    local function arg(i) return ARGV[ao + i] end
    local id, ttl, started_at = arg(1), tonumber(arg(5)), arg(11)
    if started_at ~= '' and redis.call('HGET', key(1), 'status') ~= 'queued' then  -- canceled or deleted
        redis.call('LREM', KEYS[1], 1, id)
        return 0
    end
    local dependents = redis.call('SCARD', key(7))
    if started_at ~= '' then
        redis.call('HSET', key(1), 'status', 'finished', 'ended_at', arg(4), 'started_at', started_at,
                   'worker_name', worker, 'attempts', arg(12))
    else
        redis.call('HSET', key(1), 'status', 'finished', 'ended_at', arg(4))
    end
    if ttl > 0 then
        redis.call('EXPIRE', key(1), ttl)
        if dependents > 0 then
            redis.call('EXPIRE', key(7), ttl)
        end
        if arg(8) == '1' then
            redis.call('EXPIRE', key(9), ttl)
        end
    else
        redis.call('PERSIST', key(1))
    end
    redis.call('ZADD', key(5), arg(6), id)
    redis.call('XADD', key(6), 'MAXLEN', '~', '10', '*', unpack(ARGV, ao + 13, last))
    if ttl > 0 then
        redis.call('EXPIRE', key(6), ttl)
    else
        redis.call('PERSIST', key(6))
    end
    if started_at == '' then  -- a prefetched job was never in the started registry
        redis.call('ZREM', key(2), arg(2))
    end
    if arg(10) == '1' then  -- and the job's last_heartbeat (RQ sets it to ended_at: a copy kept for result_ttl)
        redis.call('HDEL', key(1), 'last_heartbeat')
        redis.call('DEL', key(3))
        redis.call('ZREM', key(4), arg(3))
        redis.call('SREM', KEYS[4], arg(2))
    end
    redis.call('LREM', KEYS[1], 1, id)
    if arg(9) == '1' then
        redis.call('ZREM', key(8), id)
    end
    if arg(7) ~= '' then  -- its group's slot is free: the group is held no longer
        redis.call('ZREM', key(10), id)
        redis.call('HDEL', key(11), arg(7))
    end
    redis.call('PUBLISH', key(12), 'finished')
    return dependents
end

-- The worker's kept counters, added to the metrics and worker hashes.
local function add_counters()
    for kind, amount, name in string.gmatch(counters, '(%a)\t([^\t]+)\t([^\n]*)\n') do
        local hash = (kind == 'w' or kind == 'W') and KEYS[3] or KEYS[5]
        if kind == 'm' or kind == 'w' then
            redis.call('HINCRBY', hash, name, amount)
        else
            redis.call('HINCRBYFLOAT', hash, name, amount)
        end
    end
end

local function set_state(state)
    if state ~= known_state then
        redis.call('HSET', KEYS[3], 'state', state)
    end
end

local dependents = {}
local ko, ao = WORKER_KEYS, 7
for i = 1, finishes do
    local count = tonumber(ARGV[ao + 1])
    dependents[i] = finish(ko, ao + 1, ao + 1 + count)
    ko, ao = ko + FINISH_KEYS, ao + 1 + count
end
if register then
    redis.call('SADD', KEYS[2], worker)
end
if lanes == 0 then
    set_state('idle')
    if counters ~= '' then
        add_counters()
    end
    return {dependents, counters ~= '' and 1 or 0, false}
end

local time = redis.call('TIME')
local now_text = time[1] .. '.' .. string.format('%06d', tonumber(time[2]))
local now = tonumber(now_text)
local execution_id, now_iso, ttl = ARGV[C + 1], ARGV[C + 2], tonumber(ARGV[C + 3])
local prefetch, start_id = math.min(tonumber(ARGV[C + 6]) or 0, 100), ARGV[C + 7] or ''
local job_prefix = @JOB_PREFIX@
local lane_head, separator, group_field, ungrouped = @LANE_HEAD@, @GROUP_SEPARATOR@, @GROUP_FIELD@, @UNGROUPED@
local batch_field = @BATCH_FIELD@
local function lane_key(n, which) return KEYS[LANE0 + PER_LANE * (n - 1) + which] end

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

-- Every lane's due jobs promoted; the earliest waiting time left (-1 for none).
local function promote_all()
    local earliest = -1
    for n = 1, lanes do
        local due = promote_due(n)
        if due and (earliest < 0 or due < earliest) then
            earliest = due
        end
    end
    return earliest
end

-- True when a job hash's fields (as HGETALL answers them) name a batch.
local function in_batch(fields)
    for i = 1, #fields, 2 do
        if fields[i] == batch_field then
            return true
        end
    end
    return false
end

-- Mark the claimed job `id` of lane n started; return its hash's fields (as they are now) and 1, or 0 if
-- it is not queued.
local function start(n, id)
    local job_key = job_prefix .. id
    local fields = redis.call('HGETALL', job_key)
    local job = {}
    for i = 1, #fields, 2 do
        job[fields[i]] = fields[i + 1]
    end
    if job['status'] ~= 'queued' then
        return fields, 0
    end
    -- The started registry first: if it is planted with another type, the job hash is not yet touched.
    redis.call('ZADD', lane_key(n, 4), now + ttl, id .. ':' .. execution_id)
    local attempts = job['attempts'] or '0'
    if not string.match(attempts, '^-?%d+$') then  -- damaged: HINCRBY refuses it, as RQ's would
        redis.call('HINCRBY', job_key, 'attempts', 1)
    end
    local changed = {'status', 'started', 'started_at', now_iso, 'worker_name', worker,
                     'attempts', tostring(tonumber(attempts) + 1)}
    redis.call('HSET', job_key, unpack(changed))
    redis.call('PERSIST', job_key)
    for _, value in ipairs(changed) do  -- the reply's fields as the hash holds them now (last one wins)
        fields[#fields + 1] = value
    end
    return fields, 1
end

-- The first lane's job: {id, lane number, fields, started}, or nil when every lane is empty.
-- One EXISTS tells whether any lane's groups take turns and whether the lanes before `hint` (the one the
-- last job came from) are all empty: then the claim starts at `hint` (2 commands in the steady state).
local function claim(hint)
    local turns, probe = {}, {}
    for n = 1, lanes do
        turns[n] = lane_key(n, 5)
        probe[n] = turns[n]
    end
    for n = 1, hint - 1 do
        probe[#probe + 1] = lane_key(n, 1)
    end
    local first, taking_turns = 1, true
    if redis.call('EXISTS', unpack(probe)) == 0 then
        first, taking_turns = hint, false
    elseif hint > 1 then
        taking_turns = redis.call('EXISTS', unpack(turns)) > 0
    end
    for n = first, lanes do
        local turn = taking_turns and next_turn(n)
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
            local fields, started = start(n, id)
            local more = {}
            for _ = 1, taking_turns and 0 or prefetch do
                local next_id = redis.call('LMOVE', lane_key(n, 1), KEYS[1], 'LEFT', 'RIGHT')
                if not next_id then
                    break
                end
                local next_fields = redis.call('HGETALL', job_prefix .. next_id)
                if in_batch(next_fields) then  -- back to the lane's front: batch jobs are claimed one at a time
                    redis.call('LMOVE', KEYS[1], lane_key(n, 1), 'RIGHT', 'LEFT')
                    break
                end
                more[#more + 1] = next_id
                more[#more + 1] = next_fields
            end
            if #more == 0 then
                redis.call('LPOP', lane_key(n, 3))
            else
                redis.call('LPOP', lane_key(n, 3), 1 + #more / 2)
            end
            return {id, n, fields, started, more}
        end
    end
    return nil
end

-- The claim: {1 if the counters were added else 0, the claim's reply}.
local function claim_part()
    if start_id ~= '' then  -- a prefetched job of lane 1 that runs now: marked started, nothing claimed
        local fields, started = start(1, start_id)
        if started == 1 then
            set_state('busy')
        end
        return {0, {start_id, 1, fields, started, {}, now_text}}
    end
    local hint = math.min(math.max(tonumber(ARGV[C + 5]) or 1, 1), lanes)
    local earliest
    if ARGV[C + 4] == '1' then
        earliest = promote_all()
    end
    local found = claim(hint)
    if not found and not earliest then  -- held-back jobs not looked for yet: look now, then try again
        earliest = promote_all()
        found = claim(hint)
    end
    if found then
        if found[4] == 1 then  -- a claimed job that is not queued (canceled, ended, damaged) changes nothing
            set_state('busy')
        end
        local flushed = counters ~= '' and flush_always
        if flushed then
            add_counters()
        end
        found[6] = now_text
        return {flushed and 1 or 0, found}
    end
    for n = 1, lanes do
        redis.call('DEL', lane_key(n, 3))
    end
    set_state('idle')
    if counters ~= '' then
        add_counters()
    end
    return {counters ~= '' and 1 or 0, {false, tostring(earliest), now_text}}
end

if finishes == 0 then
    local reply = claim_part()
    return {dependents, reply[1], reply[2]}
end
-- After a finish, an error of the claim (a record planted in a lane, a damaged job) must not undo the
-- finished job's outcome in the worker's eyes: it is answered as {false, 'error', message} and the worker
-- handles it as a failed claim (its claims go back, the damaged job fails alone).
local ok, reply = pcall(claim_part)
if not ok then
    return {dependents, 0, {false, 'error', type(reply) == 'table' and reply.err or tostring(reply)}}
end
return {dependents, reply[1], reply[2]}
