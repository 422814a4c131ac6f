-- Fire: turn due schedules into run jobs, atomically and at most once per due time.
-- KEYS: the scheduler lease, the due zset, the buffered set, RQ's set of queue keys, the stats hash.
-- ARGV: lease owner ('' = unfenced: run now and backfill), now (epoch ms), now (RQ's ISO format),
--       config (JSON: key shapes, placeholder id, lag buckets; see service.schedules.runs.CONFIG),
--       run records kept per schedule, templates (JSON), entries (JSON), then the job data blobs.
-- A template is [hash fields, queue key, push commands, foldable?, jittered retry?].
-- An entry is {id, mode, template, fires, records, overlap, score, next_due, next_score, buffered, repeat,
-- data blob number}; a fire is {due ms, kind code, lag target ms, due ISO, job id[, retry intervals JSON if
-- jittered]}; a record is {due ms, status code}: m missed, c coalesced, k skipped by a calendar.
-- A schedule's hash is laid out as service.schedules.store says: state packed in field s, run records
-- in a ring of fields r<n>, next due time n, buffered due time b, paused p.
-- Nothing fires unless the lease still holds the owner token (fencing: a paused ex-leader cannot
-- fire). Per entry: a due entry fires only if its due score is still the one planned on
-- (compare-and-set: a concurrent upsert, pause or other leader wins); the overlap policy is
-- applied against the previous run's status; each run's job hash is created only if absent and
-- pushed to its lane; the schedule moves to its next due time; its run records and the stats
-- totals are written. A schedule still in the first release's layout is not touched (-2).
-- Returns JSON: '[-1]' if the lease is not the owner's, else per entry: [created, skipped, dropped]
-- (due), 1 or 0 (buffer), a list of 1/0 per fire (manual), or -2 (not applied: changed meanwhile)
-- or -3 (manual: no such schedule).
local lease, due_key, buffered_key, queues_key, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local owner, now_ms, now_rq = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local config, keep = cjson.decode(ARGV[4]), tonumber(ARGV[5])
if owner ~= '' and redis.call('GET', lease) ~= owner then return '[-1]' end
local shapes, LAG_BUCKETS = config.keys, config.lag_buckets
local prefix, job_prefix = shapes.schedule, shapes.job
local JOB_ID, null = config.placeholder, cjson.null
-- The packed run state (field s), in order; '' stands for none.
local STATE = {'last_run', 'runs', 'missed', 'skipped', 'dropped', 'coalesced', 'lag_last', 'lag_max', 'lag_sum',
  'lag_count', 'records'}
local COUNTED = {m = 'missed', c = 'coalesced', k = 'skipped', s = 'skipped', d = 'dropped'}
local function int(x) return string.format('%d', x) end
local function opt(v) if v == null then return nil end return v end

-- One job hash layout per distinct template; the data and meta values change per run.
local templates = {}
for n, t in ipairs(cjson.decode(ARGV[6])) do
  local hash = {}
  for _, v in ipairs(t[1]) do hash[#hash + 1] = v end
  for _, v in ipairs({'created_at', now_rq, 'enqueued_at', now_rq, 'data', '', 'meta', ''}) do
    hash[#hash + 1] = v
  end
  local meta_slot = #hash
  if t[5] then hash[#hash + 1], hash[#hash + 2] = 'retry_intervals', '' end
  local folds = {}
  for i, op in ipairs(t[3]) do folds[i] = op[1] .. ' ' .. op[2] end
  templates[n] = {hash = hash, meta_slot = meta_slot, jittered = t[5], queue_key = t[2], push = t[3], fold = t[4],
    folds = folds}
end

-- Batch totals (stats hash) and lane pushes are sent once per call, not per run.
local totals, pending, pending_keys, queued = {}, {}, {}, {}
local function total(name, n) totals[name] = (totals[name] or 0) + n end

local function flush()
  for _, k in ipairs(pending_keys) do redis.call(unpack(pending[k])) end
  pending, pending_keys = {}, {}
end

local function push(tpl, job_id)
  if not queued[tpl.queue_key] then redis.call('SADD', queues_key, tpl.queue_key); queued[tpl.queue_key] = true end
  for i, op in ipairs(tpl.push) do
    if tpl.fold then
      -- RPUSH/LPUSH/SADD k a, then k b == one call with a b: same order, same result.
      local k = tpl.folds[i]
      local acc = pending[k]
      if not acc then acc = {op[1], op[2]}; pending[k] = acc; pending_keys[#pending_keys + 1] = k end
      if op[3] == JOB_ID then acc[#acc + 1] = job_id else acc[#acc + 1] = op[3] end
      if #acc > 1000 then flush() end
    else
      local call = {}
      for n, v in ipairs(op) do if v == JOB_ID then call[n] = job_id else call[n] = v end end
      flush()
      redis.call(unpack(call))
    end
  end
end

-- A schedule's state is read with one HMGET and written back with one HSET (and HDEL).
local function load(id)
  local v = redis.call('HMGET', prefix .. id, 'p', 's', 'b', 'spec')
  if v[4] then return nil end
  local s = {id = id, paused = v[1], buffered_due = v[3], log = {}, fields = {}, gone = {}}
  local i = 1
  for x in string.gmatch((v[2] or '') .. ',', '([^,]*),') do
    s[STATE[i]] = tonumber(x)
    i = i + 1
  end
  for _, name in ipairs({'runs', 'missed', 'skipped', 'dropped', 'coalesced', 'lag_sum', 'lag_count', 'records'}) do
    s[name] = s[name] or 0
  end
  return s
end

local function put(s, field, value)
  if value then s.fields[field] = value; s.gone[field] = nil else s.fields[field] = nil; s.gone[field] = true end
end

local function save(s)
  local hset, hdel = {}, {}
  for _, rec in ipairs(s.log) do
    hset[#hset + 1] = 'r' .. int(s.records % keep)
    hset[#hset + 1] = rec
    s.records = s.records + 1
  end
  if #s.log > 0 or s.changed then
    local packed = {}
    for n, name in ipairs(STATE) do packed[n] = s[name] and int(s[name]) or '' end
    hset[#hset + 1], hset[#hset + 2] = 's', table.concat(packed, ',')
  end
  for field, value in pairs(s.fields) do hset[#hset + 1], hset[#hset + 2] = field, value end
  for field in pairs(s.gone) do hdel[#hdel + 1] = field end
  if #hset > 0 then redis.call('HSET', prefix .. s.id, unpack(hset)) end
  if #hdel > 0 then redis.call('HDEL', prefix .. s.id, unpack(hdel)) end
end

-- A record: <due ms>:<status><kind>:<ms from due to when it was written>[:<lag ms, when not that>].
local function record(s, due, codes, lag)
  local offset = now_ms - due
  local rec = int(due) .. ':' .. codes .. ':' .. int(offset)
  if lag and lag ~= offset then rec = rec .. ':' .. int(lag) end
  s.log[#s.log + 1] = rec
end

local function skip(s, due, code)
  local counter = COUNTED[code]
  if counter then s[counter] = s[counter] + 1; total(counter, 1) end
  s.changed = true
  record(s, due, code)
end

local function active(s)
  if not s.last_run then return nil end
  local last = s.id .. '-' .. int(math.floor(s.last_run / 1000))
  local st = redis.call('HGET', job_prefix .. last, 'status')
  if st == 'queued' or st == 'started' or st == 'scheduled' or st == 'deferred' then return last, st end
  return nil
end

local function cancel(job_id, st)
  flush()  -- the job may have been pushed earlier in this call
  local jk = job_prefix .. job_id
  local origin = redis.call('HGET', jk, 'origin') or 'default'
  if st == 'started' then
    local worker = redis.call('HGET', jk, 'worker_name')
    if worker and worker ~= '' then
      redis.call('PUBLISH', shapes.pubsub .. worker, cjson.encode({command = 'stop-job', job_id = job_id}))
    end
  else
    redis.call('LREM', shapes.queue .. origin, 0, job_id)
    redis.call('ZREM', shapes.scheduled .. origin, job_id)
    redis.call('ZREM', shapes.deferred .. origin, job_id)
    redis.call('HSET', jk, 'status', 'canceled')
    redis.call('ZADD', shapes.canceled .. origin, math.floor(now_ms / 1000) + 86400, job_id)
  end
end

local function create(s, f, tpl, data, count_lag)
  local job_id = f[5]
  local jk = job_prefix .. job_id
  if redis.call('EXISTS', jk) == 1 then return 0 end
  local hash = tpl.hash
  hash[tpl.meta_slot - 2] = data
  hash[tpl.meta_slot] = '{"schedule_id": "' .. s.id .. '", "scheduled_for": "' .. f[4] .. '"}'
  if tpl.jittered then hash[#hash] = f[6] end
  redis.call('HSET', jk, unpack(hash))
  push(tpl, job_id)
  s.last_run, s.runs, s.changed = f[1], s.runs + 1, true
  total('runs', 1)
  local lag = nil
  if count_lag then
    lag = math.max(0, now_ms - f[3])
    s.lag_sum, s.lag_count, s.lag_last = s.lag_sum + lag, s.lag_count + 1, lag
    s.lag_max = math.max(lag, s.lag_max or 0)
    local bucket = 'lag_ms_bucket_inf'
    for _, limit in ipairs(LAG_BUCKETS) do
      if lag <= limit then bucket = 'lag_ms_bucket_' .. limit; break end
    end
    total(bucket, 1)
    total('lag_ms_sum', lag)
    total('lag_count', 1)
  end
  record(s, f[1], 'e' .. f[2], lag)
  return 1
end

local function finished(s, limit) return limit and s.runs >= limit end

local function fire_due(e, s, tpl, data)
  local overlap, limit = e[6], opt(e[11])
  local created, skipped, dropped = 0, 0, 0
  local done = false
  for _, r in ipairs(e[5]) do skip(s, r[1], r[2]) end
  for _, f in ipairs(e[4]) do
    if finished(s, limit) then done = true; break end
    local last, st = nil, nil
    if overlap ~= 'allow' or f[2] == 'b' then last, st = active(s) end
    if f[2] == 'b' then
      -- A run buffered earlier goes first once its predecessor has ended.
      if not last and s.buffered_due and tonumber(s.buffered_due) == f[1] then
        s.buffered_due = nil
        put(s, 'b', nil)
        redis.call('SREM', buffered_key, s.id)
        created = created + create(s, f, tpl, data, false)
      end
    elseif last and overlap == 'skip' then
      skip(s, f[1], 's')
      skipped = skipped + 1
    elseif last and overlap == 'buffer_one' then
      if s.buffered_due then
        skip(s, f[1], 'd')
        dropped = dropped + 1
      else
        s.buffered_due = f[1]
        put(s, 'b', int(f[1]))
        redis.call('SADD', buffered_key, s.id)
        record(s, f[1], 'b')
      end
    else
      if last and overlap == 'cancel_other' then cancel(last, st) end
      created = created + create(s, f, tpl, data, true)
    end
  end
  local next_score = opt(e[9])
  if done or finished(s, limit) or not next_score then
    redis.call('ZREM', due_key, s.id)
    put(s, 'n', nil)
  else
    redis.call('ZADD', due_key, int(next_score), s.id)
    put(s, 'n', opt(e[8]) and int(e[8]) or nil)
  end
  return {created, skipped, dropped}
end

local function fire_entry(e)
  local id, mode, tpl, data = e[1], e[2], templates[e[3]], ARGV[7 + e[12]]
  if mode == 'due' then
    local score = redis.call('ZSCORE', due_key, id)
    if not score or tonumber(score) ~= e[7] then return -2 end
    local s = load(id)
    if not s then return -2 end
    if s.paused == '1' then redis.call('ZREM', due_key, id); return -2 end
    local result = fire_due(e, s, tpl, data)
    save(s)
    return result
  end
  if redis.call('EXISTS', prefix .. id) == 0 then return -3 end
  local s = load(id)
  if not s then return -2 end
  if mode == 'buffer' then
    local buffered = opt(e[10])
    if not s.buffered_due or tonumber(s.buffered_due) ~= buffered or active(s) then return -2 end
    if s.paused == '1' then return -2 end
    put(s, 'b', nil)
    redis.call('SREM', buffered_key, id)
    local created = create(s, e[4][1], tpl, data, false)
    save(s)
    return created
  end
  local created = {}
  for n, f in ipairs(e[4]) do created[n] = create(s, f, tpl, data, false) end
  save(s)
  return created
end

local results = {}
for n, e in ipairs(cjson.decode(ARGV[7])) do results[n] = fire_entry(e) end
flush()
for name, n in pairs(totals) do redis.call('HINCRBY', stats, name, int(n)) end
return cjson.encode(results)
