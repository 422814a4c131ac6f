-- Batch: open a batch, or count one of its jobs' end; whoever brings its pending jobs to zero
-- enqueues its on_complete job, in the same call (exactly once: the pending set is the truth,
-- SREM is idempotent, and the callback's id is claimed with HSETNX).
-- KEYS: batch hash, pending set, RQ's set of queue keys, metrics hash.
-- ARGV[1] 'open': ARGV[2] a JSON header {fields: [name, value, ...] for the batch hash (total, the
--       callback's hash fields, data around its tally, lane, doorbell and job keys, counter field),
--       members: [job id, ...], keep: seconds to keep a done batch, first_job_key: a member's job
--       key (or '')}. A batch whose first member's job is not there was refused by the write in the
--       same transaction (a full lane): nothing is opened.
-- ARGV[1] 'end': ARGV[2] the job id, ARGV[3] its outcome: finished, failed or canceled; ARGV[4] the
--       seconds to keep a done batch.
-- Returns 1 when this call enqueued the callback, else 0.
local function iso(seconds, micros)
    -- RQ's timestamp ('%Y-%m-%dT%H:%M:%S.%fZ') of an epoch time: civil_from_days (H. Hinnant).
    local days = math.floor(seconds / 86400)
    local rem = seconds - days * 86400
    local z = days + 719468
    local era = math.floor(z / 146097)
    local doe = z - era * 146097
    local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
    local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
    local mp = math.floor((5 * doy + 2) / 153)
    local d = doy - math.floor((153 * mp + 2) / 5) + 1
    local m = mp < 10 and mp + 3 or mp - 9
    local y = yoe + era * 400 + (m <= 2 and 1 or 0)
    return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%06dZ', y, m, d, math.floor(rem / 3600),
                         math.floor(rem % 3600 / 60), rem % 60, micros)
end

-- Every job has ended: enqueue the callback once, with the tally as its `batch` keyword.
local function complete(keep)
    local b = redis.call('HMGET', KEYS[1], 'id', 'total', 'finished', 'failed', 'canceled', 'cb_job',
                         'cb_fields', 'cb_head', 'cb_tail', 'cb_lane', 'cb_doorbell', 'cb_key', 'cb_counter')
    if redis.call('HSETNX', KEYS[1], 'on_complete_job_id', b[6]) == 0 then
        return 0
    end
    local tally = string.format('{"id":"%s","total":%d,"finished":%d,"failed":%d,"canceled":%d}', b[1],
                                tonumber(b[2]), tonumber(b[3] or 0), tonumber(b[4] or 0), tonumber(b[5] or 0))
    local time = redis.call('TIME')
    local now = iso(tonumber(time[1]), tonumber(time[2]))
    local fields = cjson.decode(b[7])
    for _, v in ipairs({'created_at', now, 'enqueued_at', now, 'data', b[8] .. tally .. b[9]}) do
        fields[#fields + 1] = v
    end
    redis.call('HSET', b[12], unpack(fields))
    redis.call('RPUSH', b[10], b[6])
    redis.call('RPUSH', b[11], 1)
    redis.call('SADD', KEYS[3], b[10])
    redis.call('HINCRBY', KEYS[4], b[13], 1)
    redis.call('EXPIRE', KEYS[1], keep)
    redis.call('EXPIRE', KEYS[2], keep)
    return 1
end

if ARGV[1] == 'open' then
    local h = cjson.decode(ARGV[2])
    if h.first_job_key ~= '' and redis.call('EXISTS', h.first_job_key) == 0 then
        return 0
    end
    redis.call('HSET', KEYS[1], unpack(h.fields))
    for i = 1, #h.members, 1000 do
        redis.call('SADD', KEYS[2], unpack(h.members, i, math.min(i + 999, #h.members)))
    end
    if #h.members == 0 then
        return complete(h.keep)
    end
    return 0
end
if redis.call('SREM', KEYS[2], ARGV[2]) == 0 then
    return 0  -- not a pending member: it ended before (a second run, a reaper race) or never was
end
redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
if redis.call('SCARD', KEYS[2]) == 0 then
    return complete(tonumber(ARGV[4]))
end
return 0
