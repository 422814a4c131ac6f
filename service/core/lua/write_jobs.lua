-- Write jobs: planned jobs become RQ job hashes, lane pushes and registries, all or nothing.
-- KEYS: RQ's set of queue keys, the metrics hash.
-- ARGV[1]: a JSON header:
--   now (RQ's ISO format), claim_ttl (s), deferred_score, claims [[key, job id], ...],
--   counts [[metrics field, n], ...], queues (queue keys to add to KEYS[1]),
--   job_prefix, placeholder (the id in push commands), dependents and dependencies
--   ([before, after] the job id in RQ's key shapes), group_separator, lane_head, ungrouped,
--   templates [{fields, status, push [[command, key, value], ...], registry, groups}, ...],
--   jobs [[id, template number, score, data size, [extra field, value, ...], [parent id, ...], group], ...],
--   and with max_queued, lanes [[list key, scheduled key, deferred key, jobs added, lane], ...] per lane receiving jobs.
-- ARGV[2]: every job's data, one after another (each job's data size says where it ends).
-- A template's commands are RQ's own for its status: the lane push and doorbell
-- (ServiceQueue.push_job_id) for queued; the scheduled registry for scheduled; the deferred
-- registry and dependency sets (Job.register_dependency) for deferred. The script is atomic,
-- so the order of the writes within it is invisible.
-- Fair share: a queued job with a group is also indexed in its group's list, and a group whose
-- list was empty joins its lane's turns (a new turns list also gets the lane head's turn); a job
-- without a group is indexed under the ungrouped group when its lane takes turns.
-- Returns 1, or {'queue_full', lane, waiting} having written nothing when a lane would hold
-- more than max_queued waiting (queued, scheduled, deferred) jobs.
local h = cjson.decode(ARGV[1])
local blobs = ARGV[2]
local now, templates, placeholder = h.now, h.templates, h.placeholder
if h.max_queued then
    for _, lane in ipairs(h.lanes) do
        local waiting = redis.call('LLEN', lane[1]) + redis.call('ZCARD', lane[2]) + redis.call('ZCARD', lane[3])
        if waiting + lane[4] > h.max_queued then
            return {'queue_full', lane[5], waiting}
        end
    end
end
for _, claim in ipairs(h.claims) do
    redis.call('SET', claim[1], claim[2], 'EX', h.claim_ttl)
end
-- One field list per template, reused: each job's values overwrite its last slots.
for _, t in ipairs(templates) do
    local fields = t.fields
    fields[#fields + 1], fields[#fields + 2] = 'created_at', now
    if t.status == 'queued' then
        fields[#fields + 1], fields[#fields + 2] = 'enqueued_at', now
    end
    fields[#fields + 1] = 'data'
    t.data_slot = #fields + 1
end
local turns = {}  -- a lane's turns key -> whether the lane takes turns (it exists or was made here)
local function index(ring, group, id)
    if turns[ring] == nil then
        turns[ring] = redis.call('EXISTS', ring) == 1
    end
    if group == '' then
        if not turns[ring] then
            return
        end
        group = h.ungrouped
    end
    if redis.call('RPUSH', ring .. h.group_separator .. group, id) == 1 then
        if redis.call('RPUSH', ring, group) == 1 then
            redis.call('LPUSH', ring, h.lane_head)
        end
        turns[ring] = true
    end
end
-- Pushes to one list are collected and sent as one command: RPUSH k a b is RPUSH k a; RPUSH k b.
local pushes, push_order = {}, {}
local offset = 1
for _, job in ipairs(h.jobs) do
    local id, t, score, size, extra, parents, group = job[1], templates[job[2]], job[3], job[4], job[5], job[6], job[7]
    local fields, slot = t.fields, t.data_slot
    fields[slot] = string.sub(blobs, offset, offset + size - 1)
    offset = offset + size
    for j = 1, #extra do
        fields[slot + j] = extra[j]
    end
    redis.call('HSET', h.job_prefix .. id, unpack(fields, 1, slot + #extra))
    if t.status == 'queued' then
        index(t.groups, group, id)
        for _, command in ipairs(t.push) do
            local list = command[1] .. ' ' .. command[2]
            local values = pushes[list]
            if not values then
                values = {command[1], command[2]}
                pushes[list] = values
                push_order[#push_order + 1] = list
            end
            values[#values + 1] = (command[3] == placeholder) and id or command[3]
        end
    elseif t.status == 'scheduled' then
        redis.call('ZADD', t.registry, score, id)
    else
        redis.call('ZADD', t.registry, h.deferred_score, id)
        for _, parent in ipairs(parents) do
            redis.call('SADD', h.dependents[1] .. parent .. h.dependents[2], id)
            redis.call('SADD', h.dependencies[1] .. id .. h.dependencies[2], parent)
        end
    end
end
for _, list in ipairs(push_order) do
    redis.call(unpack(pushes[list]))
end
for _, c in ipairs(h.counts) do
    redis.call('HINCRBY', KEYS[2], c[1], c[2])
end
if #h.queues > 0 then
    redis.call('SADD', KEYS[1], unpack(h.queues))
end
return 1
