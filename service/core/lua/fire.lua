-- Fire: turn due schedules into run jobs, atomically and at most once per due time.
-- KEYS: the scheduler lease, the due zset, the buffered set, RQ's set of queue keys, the stats hash.
-- ARGV: lease owner ('' = unfenced: run now and backfill), now (epoch ms), now (RQ's ISO format),
--       config (JSON: key shapes, placeholder id, lag buckets; see service.schedules.runs.CONFIG),
--       run records kept per schedule, templates (JSON), plans (JSON), entries (JSON), then the job
--       data blobs.
-- A template is [hash fields, queue key, push commands, foldable?, jittered retry?, the lane's group turns].
-- A plan, shared by the entries alike (service.schedules.runs.Plans), is [mode (due | buffer | manual),
-- template, fires, records, overlap, next due (text), repeat, buffered due].
-- A fire is [due ms, kind code, job id suffix "-<due s>", meta's end, its run record, lag ms, lag bucket,
-- the record if skipped, if dropped, if buffered]; a record is [status code, the record]: m missed,
-- c coalesced, k skipped by a calendar. Records are written as service.schedules.store packs them.
-- An entry is [schedule id, plan, data blob, its fields n and u as planned on ('' when absent), next score
-- (text), retry intervals per fire, the runs' fair-share group]: a run with a group is indexed in its lane's
-- turns as the job writer does.
-- A schedule's hash is laid out as service.schedules.store says: state packed in field s, run records
-- in a ring of fields r<n>, next due time n, buffered due time b, paused p.
-- Nothing fires unless the lease still holds the owner token (fencing: a paused ex-leader cannot
-- fire). Per entry: a due entry fires only if its hash still holds the next due time (n) and update
-- time (u) planned on, read with its state (compare-and-set: a concurrent upsert or resume writes u, a
-- pause or another firing n, a delete the whole hash; the one that came first wins); the overlap policy is
-- applied against the previous run's status; each run's job hash is created only if absent (a COPY
-- of its template) and pushed to its lane; the schedule moves to its next due time (one ZADD per call);
-- its run records and the stats totals are written. A schedule still in the first release's layout is not touched (-2).
-- Returns JSON: '[-1]' if the lease is not the owner's, else per entry: [created, skipped, dropped]
-- (due; just created when the others are 0), 1 or 0 (buffer), a list of 1/0 per fire (manual), or -2 (not
-- applied: changed meanwhile)
-- or -3 (manual: no such schedule).
local lease, due_key, buffered_key, queues_key, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local owner, now_rq = ARGV[1], ARGV[3]
local config, keep = cjson.decode(ARGV[4]), tonumber(ARGV[5])
if owner ~= '' and redis.call('GET', lease) ~= owner then return '[-1]' end
local shapes, LAG_BUCKETS = config.keys, config.lag_buckets
local prefix, job_prefix = shapes.schedule, shapes.job
local JOB_ID, null = config.placeholder, cjson.null
local META_HEAD = '{"schedule_id": "'
-- The packed run state (field s): last run, five counters, lag last, max, sum and count, records written.
local STATE = {'last_run', 'runs', 'missed', 'skipped', 'dropped', 'coalesced', 'lag_last', 'lag_max', 'lag_sum',
  'lag_count', 'records'}
local NSTATE = #STATE
local UNPACK = '^' .. string.rep('([^,]*),', NSTATE - 1) .. '([^,]*)$'
local PACK = '%s,' .. string.rep('%d,', 5) .. '%s,%s,%d,%d,%d'
local PACK_SET = string.rep('%d,', NSTATE - 1) .. '%d'  -- last run and lag set: one format, no optional field
local COUNTED = {m = 'missed', c = 'coalesced', k = 'skipped', s = 'skipped', d = 'dropped'}
local function int(x) return string.format('%d', x) end
local function opt(v) if v == null then return nil end return v end
local function maybe(x) if x then return int(x) end return '' end

-- One job hash per distinct template, written once per call under a scratch key (config.scratch .. n) when its
-- first run is made: each run's hash is a COPY of it (COPY creates it only if absent) plus its data and meta.
-- A COPY costs Redis less than an ~18-field HSET sent from Lua; the scratch keys are deleted before the end.
local templates, scratch = {}, {}
for n, t in ipairs(cjson.decode(ARGV[6])) do
  local hash = {}
  for _, v in ipairs(t[1]) do hash[#hash + 1] = v end
  hash[#hash + 1], hash[#hash + 2], hash[#hash + 3], hash[#hash + 4] = 'created_at', now_rq, 'enqueued_at', now_rq
  local folds = {}
  for i, op in ipairs(t[3]) do folds[i] = op[1] .. ' ' .. op[2] end
  templates[n] = {key = config.scratch .. n, hash = hash, jittered = t[5], queue_key = t[2], push = t[3],
    fold = t[4], folds = folds, groups = t[6]}
end
local plans = cjson.decode(ARGV[7])

-- Batch totals (stats hash) and lane pushes are sent once per call, not per run.
local totals, pending, pending_keys, queued = {}, {}, {}, {}
local runs_total, lag_sum_total, lag_counts = 0, 0, {}
for n = 1, #LAG_BUCKETS + 1 do lag_counts[n] = 0 end
local function total(name, n) totals[name] = (totals[name] or 0) + n end

local function flush()
  local calls, order = pending, pending_keys
  pending, pending_keys = {}, {}  -- taken first: a call that fails is never sent twice
  for _, k in ipairs(order) do redis.call(unpack(calls[k])) end
end

-- The schedules' next due scores go in one ZADD per call too.
local moves, nmoves = {'ZADD', due_key}, 2
local function move_due()
  local call, n = moves, nmoves
  moves, nmoves = {'ZADD', due_key}, 2
  if n > 2 then redis.call(unpack(call, 1, n)) end
end

local function push(tpl, job_id)
  if not queued[tpl.queue_key] then redis.call('SADD', queues_key, tpl.queue_key); queued[tpl.queue_key] = true end
  local ops = tpl.push
  for i = 1, #ops do
    local op = ops[i]
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

-- A grouped run joins its group's index, and a group new to the lane its turns (with the lane head's turn).
local function index_group(ring, group, job_id)
  if redis.call('RPUSH', ring .. config.group_separator .. group, job_id) == 1 then
    if redis.call('RPUSH', ring, group) == 1 then redis.call('LPUSH', ring, config.lane_head) end
  end
end

-- A schedule's state is read with one HMGET (with what the compare-and-set compares: t, n, u) and written
-- back with one HSET (and HDEL); returns the state and the values read, or nil for the first release's layout.
-- The state table is made with every field it may get, so it is never resized.
local function load(id)
  local v = redis.call('HMGET', prefix .. id, 'p', 's', 'b', 'spec', 't', 'n', 'u')
  if v[4] then return nil end
  local s = {id = id, paused = v[1], buffered_due = v[3], writes = {}, nwrites = 0,
    runs = 0, missed = 0, skipped = 0, dropped = 0, coalesced = 0, lag_sum = 0, lag_count = 0, records = 0,
    last_run = nil, lag_last = nil, lag_max = nil, changed = nil, group = nil, n = nil, b = nil}
  if v[2] then
    local values = {string.match(v[2], UNPACK)}
    for n = 1, NSTATE do s[STATE[n]] = tonumber(values[n]) or s[STATE[n]] end
  end
  return s, v
end

-- A run record goes straight into the HSET that save sends, in the ring's next slot.
local SLOTS = {}  -- slot number -> field name ('r<n>'), made once per call
local function log(s, rec)
  local k = s.records % keep
  local slot = SLOTS[k]
  if not slot then slot = 'r' .. int(k); SLOTS[k] = slot end
  local writes, n = s.writes, s.nwrites
  writes[n + 1], writes[n + 2], s.nwrites, s.records = slot, rec, n + 2, s.records + 1
end

local function pack(s)
  if s.last_run and s.lag_last and s.lag_max then
    return string.format(PACK_SET, s.last_run, s.runs, s.missed, s.skipped, s.dropped, s.coalesced, s.lag_last,
      s.lag_max, s.lag_sum, s.lag_count, s.records)
  end
  return string.format(PACK, maybe(s.last_run), s.runs, s.missed, s.skipped, s.dropped, s.coalesced,
    maybe(s.lag_last), maybe(s.lag_max), s.lag_sum, s.lag_count, s.records)
end

-- s.n and s.b are the fields n (next due) and b (buffered due) to write: a value, or false to delete it.
local function save(s)
  local hset, n, hdel = s.writes, s.nwrites, nil
  if n > 0 or s.changed then hset[n + 1], hset[n + 2], n = 's', pack(s), n + 2 end
  if s.n then hset[n + 1], hset[n + 2], n = 'n', s.n, n + 2 elseif s.n == false then hdel = {'n'} end
  if s.b then
    hset[n + 1], hset[n + 2], n = 'b', s.b, n + 2
  elseif s.b == false then
    if hdel then hdel[2] = 'b' else hdel = {'b'} end
  end
  if n > 0 then redis.call('HSET', prefix .. s.id, unpack(hset, 1, n)) end
  if hdel then redis.call('HDEL', prefix .. s.id, unpack(hdel)) end
end

local function skip(s, code, rec)
  local counter = COUNTED[code]
  if counter then s[counter] = s[counter] + 1; total(counter, 1) end
  s.changed = true
  log(s, rec)
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
    redis.call('PUBLISH', shapes.ended .. job_id, 'canceled')
    redis.call('ZADD', shapes.canceled .. origin, math.floor(tonumber(ARGV[2]) / 1000) + 86400, job_id)
  end
end

local function create(s, f, tpl, data, retry)
  local job_id = s.id .. f[3]
  local jk = job_prefix .. job_id
  if not tpl.made then
    -- A key left by a call that failed midway would merge into the template: gone first.
    if redis.call('EXISTS', tpl.key) == 1 then redis.call('DEL', tpl.key) end
    scratch[#scratch + 1] = tpl.key
    redis.call('HSET', tpl.key, unpack(tpl.hash))
    tpl.made = true
  end
  if redis.call('COPY', tpl.key, jk) == 0 then return 0 end
  if tpl.jittered or s.group then
    local hash = {'data', data, 'meta', META_HEAD .. s.id .. f[4]}
    if tpl.jittered then hash[5], hash[6] = 'retry_intervals', retry end
    if s.group then hash[#hash + 1], hash[#hash + 2] = config.group_field, s.group end
    redis.call('HSET', jk, unpack(hash))
    if s.group then index_group(tpl.groups, s.group, job_id) end
  else
    redis.call('HSET', jk, 'data', data, 'meta', META_HEAD .. s.id .. f[4])
  end
  push(tpl, job_id)
  s.last_run, s.runs, s.changed = f[1], s.runs + 1, true
  runs_total = runs_total + 1
  local lag = opt(f[6])
  if lag then
    s.lag_sum, s.lag_count, s.lag_last = s.lag_sum + lag, s.lag_count + 1, lag
    if not s.lag_max or lag > s.lag_max then s.lag_max = lag end
    lag_counts[f[7]] = lag_counts[f[7]] + 1
    lag_sum_total = lag_sum_total + lag
  end
  log(s, f[5])
  return 1
end

local function fire_due(e, s, p, tpl, data)
  local overlap, limit, retries = p[5], opt(p[7]), opt(e[7])
  local created, skipped, dropped, done = 0, 0, 0, false
  local records, fires = p[4], p[3]
  for i = 1, #records do skip(s, records[i][1], records[i][2]) end
  for i = 1, #fires do
    local f = fires[i]
    if limit and s.runs >= limit then done = true; break end
    local last, st = nil, nil
    if overlap ~= 'allow' or f[2] == 'b' then last, st = active(s) end
    if f[2] == 'b' then
      -- A run buffered earlier goes first once its predecessor has ended.
      if not last and s.buffered_due and tonumber(s.buffered_due) == f[1] then
        s.buffered_due, s.b = nil, false
        redis.call('SREM', buffered_key, s.id)
        created = created + create(s, f, tpl, data, retries and retries[i])
      end
    elseif last and overlap == 'skip' then
      skip(s, 's', f[8])
      skipped = skipped + 1
    elseif last and overlap == 'buffer_one' then
      if s.buffered_due then
        skip(s, 'd', f[9])
        dropped = dropped + 1
      else
        s.buffered_due, s.b = f[1], int(f[1])
        redis.call('SADD', buffered_key, s.id)
        log(s, f[10])
      end
    else
      if last and overlap == 'cancel_other' then cancel(last, st) end
      created = created + create(s, f, tpl, data, retries and retries[i])
    end
  end
  local next_score = opt(e[6])
  if done or (limit and s.runs >= limit) or not next_score then
    redis.call('ZREM', due_key, s.id)
    s.n = false
  else
    moves[nmoves + 1], moves[nmoves + 2], nmoves = next_score, s.id, nmoves + 2
    if nmoves > 2000 then move_due() end
    s.n = opt(p[6]) or false
  end
  if skipped == 0 and dropped == 0 then return created end
  return {created, skipped, dropped}
end

local function fire_entry(e)
  local id, p = e[1], plans[e[2]]
  local group = opt(e[8])
  local mode, tpl, data = p[1], templates[p[2]], ARGV[8 + e[3]]
  if mode == 'due' then
    local s, v = load(id)
    if not s or not v[5] or (v[6] or '') ~= e[4] or (v[7] or '') ~= e[5] then return -2 end
    s.group = group
    if s.paused == '1' then redis.call('ZREM', due_key, id); return -2 end
    local result = fire_due(e, s, p, tpl, data)
    save(s)
    return result
  end
  if redis.call('EXISTS', prefix .. id) == 0 then return -3 end
  local s = load(id)
  if not s then return -2 end
  s.group = group
  local retries = opt(e[7])
  if mode == 'buffer' then
    if not s.buffered_due or tonumber(s.buffered_due) ~= p[8] or active(s) or s.paused == '1' then return -2 end
    s.b = false
    redis.call('SREM', buffered_key, id)
    local created = create(s, p[3][1], tpl, data, retries and retries[1])
    save(s)
    return created
  end
  local created = {}
  for n, f in ipairs(p[3]) do created[n] = create(s, f, tpl, data, retries and retries[n]) end
  save(s)
  return created
end

local results = {}
local ok, err = pcall(function()
  for n, e in ipairs(cjson.decode(ARGV[8])) do results[n] = fire_entry(e) end
  flush()
  move_due()
end)
if not ok then pcall(flush); pcall(move_due) end  -- the runs made before the error are pushed, their schedules moved
if #scratch > 0 then redis.call('DEL', unpack(scratch)) end
if not ok then error(err, 0) end  -- the error as Redis raised it (a full Redis: OOM), once the scratch keys are gone
total('runs', runs_total)
local lags = 0
for n, count in ipairs(lag_counts) do
  if count > 0 then
    total(n <= #LAG_BUCKETS and 'lag_ms_bucket_' .. LAG_BUCKETS[n] or 'lag_ms_bucket_inf', count)
    lags = lags + count
  end
end
total('lag_count', lags)
total('lag_ms_sum', lag_sum_total)
for name, n in pairs(totals) do
  if n ~= 0 then redis.call('HINCRBY', stats, name, int(n)) end
end
return cjson.encode(results)
