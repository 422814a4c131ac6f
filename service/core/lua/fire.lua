-- Fire: turn due schedules into run jobs, atomically and at most once per due time.
-- KEYS: the scheduler lease, the due zset, the buffered set, RQ's set of queue keys, the stats hash.
-- ARGV: lease owner ('' = unfenced: run now and backfill), now (epoch ms), now (ISO 8601),
--       now (RQ's ISO format), config (JSON: key shapes, placeholder id, lag buckets; see
--       service.schedules.runs.CONFIG), runs kept per schedule, templates (JSON), entries (JSON),
--       then one data blob per template.
-- A template is [hash fields, queue key, push commands, foldable?, jittered retry?].
-- An entry is {id, mode, template, fires, records, overlap, score, next_due, next_score, buffered, repeat};
-- a fire is {due ms, kind, lag target ms, due ISO, job id[, retry intervals JSON if jittered]}.
-- Nothing fires unless the lease still holds the owner token (fencing: a paused ex-leader cannot
-- fire). Per entry: a due entry fires only if its due score is still the one planned on
-- (compare-and-set: a concurrent upsert, pause or other leader wins); the overlap policy is
-- applied against the previous run's status; each run's job hash is created only if absent and
-- pushed to its lane; the schedule moves to its next due time; its run records and the stats
-- totals are written.
-- Returns JSON: '[-1]' if the lease is not the owner's, else per entry: [created, skipped, dropped]
-- (due), 1 or 0 (buffer), a list of 1/0 per fire (manual), or -2 (not applied: changed meanwhile)
-- or -3 (manual: no such schedule).
local lease, due_key, buffered_key, queues_key, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local owner, now_ms, now_iso, now_rq = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local config, keep = cjson.decode(ARGV[5]), tonumber(ARGV[6])
if owner ~= '' and redis.call('GET', lease) ~= owner then return '[-1]' end
local shapes, LAG_BUCKETS = config.keys, config.lag_buckets
local prefix, job_prefix = shapes.schedule[1], shapes.job
-- A schedule's state is read with one HMGET, changed in a Lua table and
-- written back with one HSET (and HDEL), instead of a command per change.
local STATE = {'paused', 'last_job_id', 'buffered_due', 'runs', 'missed', 'skipped', 'dropped', 'coalesced',
  'lag_sum_ms', 'lag_count', 'lag_max_ms'}
local WRITTEN = {'last_job_id', 'buffered_due', 'runs', 'missed', 'skipped', 'dropped', 'coalesced',
  'lag_sum_ms', 'lag_count', 'lag_max_ms', 'lag_last_ms', 'last_run_at', 'next_due'}
local JOB_ID, null = config.placeholder, cjson.null
local function int(x) return string.format('%d', x) end
local function opt(v) if v == null then return nil end return v end

-- One job hash layout per distinct spec; only the meta value changes per run.
local templates = {}
for n, t in ipairs(cjson.decode(ARGV[7])) do
  local hash = {}
  for _, v in ipairs(t[1]) do hash[#hash + 1] = v end
  for _, v in ipairs({'created_at', now_rq, 'enqueued_at', now_rq, 'data', ARGV[8 + n], 'meta', ''}) do
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

local function load(sk)
  local v = redis.call('HMGET', sk, unpack(STATE))
  return {paused = v[1], last_job_id = v[2], buffered_due = v[3], runs = v[4], missed = v[5], skipped = v[6],
    dropped = v[7], coalesced = v[8], lag_sum_ms = v[9], lag_count = v[10], lag_max_ms = v[11], dirty = {}, log = {}}
end

local function set(s, name, value) s[name] = value; s.dirty[name] = true end
local function add(s, name, n) set(s, name, (tonumber(s[name]) or 0) + n) end

local function save(sk, s)
  local hset, hdel = {}, {}
  for _, name in ipairs(WRITTEN) do
    if s.dirty[name] then
      local v = s[name]
      if v == false then hdel[#hdel + 1] = name
      else hset[#hset + 1] = name; hset[#hset + 1] = type(v) == 'number' and int(v) or v end
    end
  end
  if #hset > 0 then redis.call('HSET', sk, unpack(hset)) end
  if #hdel > 0 then redis.call('HDEL', sk, unpack(hdel)) end
  if #s.log > 0 then
    local key = sk .. shapes.schedule[2]
    if redis.call('LPUSH', key, unpack(s.log)) > keep then redis.call('LTRIM', key, 0, keep - 1) end
  end
end

local function record(s, rec) s.log[#s.log + 1] = cjson.encode(rec) end

local function active(s)
  local last = s.last_job_id
  if not last then return nil end
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
    redis.call('PUBLISH', shapes.ended .. job_id, 'canceled')
    redis.call('ZADD', shapes.canceled .. origin, math.floor(now_ms / 1000) + 86400, job_id)
  end
end

local function create(id, s, f, tpl, count_lag)
  local job_id = f[5]
  local jk = job_prefix .. job_id
  if redis.call('EXISTS', jk) == 1 then return 0 end
  local hash = tpl.hash
  hash[tpl.meta_slot] = '{"schedule_id": "' .. id .. '", "scheduled_for": "' .. f[4] .. '"}'
  if tpl.jittered then hash[#hash] = f[6] end
  redis.call('HSET', jk, unpack(hash))
  push(tpl, job_id)
  set(s, 'last_job_id', job_id)
  set(s, 'last_run_at', f[1])
  add(s, 'runs', 1)
  total('runs', 1)
  local rec = {scheduled_for = f[4], job_id = job_id, status = 'enqueued', enqueued_at = now_iso, kind = f[2]}
  if count_lag then
    local lag = math.max(0, now_ms - f[3])
    rec.lag_ms = lag
    add(s, 'lag_sum_ms', lag)
    add(s, 'lag_count', 1)
    set(s, 'lag_last_ms', lag)
    set(s, 'lag_max_ms', math.max(lag, tonumber(s.lag_max_ms) or 0))
    local bucket = 'lag_ms_bucket_inf'
    for _, limit in ipairs(LAG_BUCKETS) do
      if lag <= limit then bucket = 'lag_ms_bucket_' .. limit; break end
    end
    total(bucket, 1)
    total('lag_ms_sum', lag)
    total('lag_count', 1)
  end
  record(s, rec)
  return 1
end

local function skip(s, iso, status)
  add(s, status, 1)
  total(status, 1)
  record(s, {scheduled_for = iso, status = status, recorded_at = now_iso})
end

local function finished(s, limit) return limit and (tonumber(s.runs) or 0) >= limit end

local function fire_due(e, s, tpl)
  local id, overlap, limit = e[1], e[6], opt(e[11])
  local created, skipped, dropped = 0, 0, 0
  local done = false
  for _, r in ipairs(e[5]) do skip(s, r[1], r[2]) end
  for _, f in ipairs(e[4]) do
    if finished(s, limit) then done = true; break end
    local last, st = active(s)
    if f[2] == 'buffered' then
      -- A run buffered earlier goes first once its predecessor has ended.
      if not last and s.buffered_due and tonumber(s.buffered_due) == f[1] then
        set(s, 'buffered_due', false)
        redis.call('SREM', buffered_key, id)
        created = created + create(id, s, f, tpl, false)
      end
    elseif last and overlap == 'skip' then
      skip(s, f[4], 'skipped')
      skipped = skipped + 1
    elseif last and overlap == 'buffer_one' then
      if s.buffered_due then
        skip(s, f[4], 'dropped')
        dropped = dropped + 1
      else
        set(s, 'buffered_due', f[1])
        redis.call('SADD', buffered_key, id)
        record(s, {scheduled_for = f[4], status = 'buffered', recorded_at = now_iso})
      end
    else
      if last and overlap == 'cancel_other' then cancel(last, st) end
      created = created + create(id, s, f, tpl, true)
    end
  end
  local next_score = opt(e[9])
  if done or finished(s, limit) or not next_score then
    redis.call('ZREM', due_key, id)
    set(s, 'next_due', '')
  else
    redis.call('ZADD', due_key, int(next_score), id)
    set(s, 'next_due', opt(e[8]) or '')
  end
  return {created, skipped, dropped}
end

local function fire_entry(e)
  local id, mode, tpl = e[1], e[2], templates[e[3]]
  local sk = prefix .. id
  if mode == 'due' then
    local score = redis.call('ZSCORE', due_key, id)
    if not score or tonumber(score) ~= e[7] then return -2 end
    local s = load(sk)
    if s.paused == '1' then redis.call('ZREM', due_key, id); return -2 end
    local result = fire_due(e, s, tpl)
    save(sk, s)
    return result
  end
  if redis.call('EXISTS', sk) == 0 then return -3 end
  local s = load(sk)
  if mode == 'buffer' then
    local buffered = opt(e[10])
    if not s.buffered_due or tonumber(s.buffered_due) ~= buffered or active(s) then return -2 end
    if s.paused == '1' then return -2 end
    set(s, 'buffered_due', false)
    redis.call('SREM', buffered_key, id)
    local created = create(id, s, e[4][1], tpl, false)
    save(sk, s)
    return created
  end
  local created = {}
  for n, f in ipairs(e[4]) do created[n] = create(id, s, f, tpl, false) end
  save(sk, s)
  return created
end

local results = {}
for n, e in ipairs(cjson.decode(ARGV[8])) do results[n] = fire_entry(e) end
flush()
for name, n in pairs(totals) do redis.call('HINCRBY', stats, name, int(n)) end
return cjson.encode(results)
