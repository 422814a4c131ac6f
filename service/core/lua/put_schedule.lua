-- Write schedules if each is still as its writer read it: the read-compare-write of a PUT, a resume, the
-- declared-file sync and a bulk upsert (upsert_many) in one round trip, all of the writes or none.
-- KEYS: index zset, due zset, templates hash, template refs hash, calendar index zset, calendar refs hash,
--       then each write's schedule hash, in the order of `writes`.
-- ARGV: [1] JSON (numbers as strings):
--         fields     the hash fields compared, and read back for `answer` (service.schedules.store.FIELDS)
--         wake       wake-up channel (published when a due score written comes before every stored one)
--         cap        refuse once the index would hold more than this many (absent: no cap)
--         calendars  ids that must be calendars
--         answer     reply the hash of the (only) write as written
--         audit      {key, maxlen, fields}: an audit event XADDed (MAXLEN ~) with the writes (absent: none)
--         writes     per schedule: id; new (counted against the cap); clean (delete the hash first: new, or a
--                    record that could not be read); set {field: value}; del [fields to remove]; template
--                    [id, JSON] it starts using and release, the id of the one it stops using (both absent:
--                    same template as before); due (its due score; absent: not due); cal_add, cal_del
--                    (calendars it starts / stops naming)
--         guess      (one write only, none of ARGV[2..]) the write is planned without reading the schedule
--                    first, as a new one (new, clean) that this script turns into a replacement when the
--                    hash exists; {now: the writer's clock (ms), calendars: the spec's, paused: "1"/"0"
--                    when the spec sets it, if_new: fields only a new schedule gets, status_at: where the
--                    audit event's status is}. u is Redis's clock (past the stored u), c too when new.
--       [2..] per write in turn, each of `fields` as read: "=" .. value, or "" when absent.
-- Returns {"changed"} when a hash is not as read (read again and retry), {"cap"}, {"calendar", id} when a
-- calendar is missing; else {"ok", [templates deleted: no schedule uses them any more], then `fields` as
-- written if answer}.
-- With guess, and only then: {"read", TIME s, TIME us, the template's JSON or false, `fields` as stored}
-- (what read_schedule.lua answers) when the plan does not hold for what is stored (a paused, file-owned,
-- first-release, damaged or other-type record, other calendars, the writer's clock more than 25 ms off
-- Redis's): nothing written, the writer plans from that read; {"same", TIME s, TIME us, `fields`} when the
-- spec and pause are those stored: nothing written; "ok" replies end with "1" (created) or "0", TIME s, TIME us.
-- Checks come before the first write, and the first write (ZADD) is one a full Redis refuses, so a Redis
-- refusing writes (maxmemory, MISCONF, read-only) leaves everything as it was.
local c = cjson.decode(ARGV[1])
local fields, writes = c.fields, c.writes
local nf = #fields
local clock, guess = nil, writes[1].guess
if guess then
  -- Turn the new schedule's plan into what the stored hash needs, or answer it as read.
  clock = redis.call('TIME')
  local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
  local kind = redis.call('TYPE', KEYS[7]).ok
  local seen = kind == 'hash' and redis.call('HMGET', KEYS[7], unpack(fields)) or {}
  local f = {}
  for i = 1, nf do f[fields[i]] = seen[i] or nil end
  local w, template = writes[1], f.t and redis.call('HGET', KEYS[3], f.t)
  local function read()
    local reply = {'read', clock[1], clock[2], template or false}
    for i = 1, nf do reply[#reply + 1] = seen[i] or false end
    return reply
  end
  -- Stored numbers that Python reads (store.readable): "" or up to 14 digits, a sign allowed but on times
  -- (a time of 14 digits is before the year 5000); the state has up to 11, its first the last run's time.
  local function numbers(text, most)
    if not text then return true end
    local count = 0
    for part in (text .. ','):gmatch('([^,]*),') do
      count = count + 1
      local digits = part:match('^%-?(%d+)$')
      if count > most or (part ~= '' and not (digits and #digits <= 14 and (most > 1 and count > 1 or digits == part)))
      then
        return false
      end
    end
    return true
  end
  if (kind ~= 'hash' and kind ~= 'none') or f.spec or math.abs(tonumber(guess.now) - now) > 25 then return read() end
  for _, name in ipairs({'b', 'n', 'u', 'c'}) do
    if not numbers(f[name], 1) then return read() end
  end
  if not numbers(f.s, 11) then return read() end
  local before = tonumber(f.u or '')
  w.set.u = string.format('%d', before and math.max(now, before + 1) or now)  -- a write always moves u
  if not f.t then
    for i = 1, nf do if seen[i] then return read() end end  -- a hash without a template: damaged
    w.set.c = w.set.u
    for name, value in pairs(guess.if_new) do w.set[name] = value end
    w.cal_add = guess.calendars
  else
    if not template or f.o == 'file' or (not guess.paused and f.p == '1') then return read() end
    local ok, stored = pcall(cjson.decode, template)
    if not ok or type(stored) ~= 'table' then return read() end
    local had, count = {}, 0
    for _, calendar in ipairs(type(stored.skip_calendars) == 'table' and stored.skip_calendars or {}) do
      if not had[calendar] then had[calendar], count = true, count + 1 end
    end
    for _, calendar in ipairs(guess.calendars) do
      if not had[calendar] then return read() end
    end
    if count ~= #guess.calendars then return read() end
    local same_pause = (f.p == '1') == ((guess.paused or '0') == '1')
    if same_pause and f.t == w.template[1] and (f.a or '') == (w.set.a or '') then
      local reply = {'same', clock[1], clock[2]}
      for i = 1, nf do reply[#reply + 1] = seen[i] or false end
      return reply
    end
    w.new, w.clean = false, false
    if f.t == w.template[1] then w.template = nil else w.release = f.t end
  end
  if c.audit then c.audit.fields[guess.status_at] = w.new and '201' or '200' end
  writes[1].guess = nil  -- compared: the hash is as just read
end
for n, w in ipairs(writes) do
  -- A key of another type (planted) reads as no schedule, as in read_schedule.lua.
  if not guess then
    local seen = redis.pcall('HMGET', KEYS[6 + n], unpack(fields))
    if seen.err then seen = {} end
    local base = 1 + (n - 1) * nf
    for i = 1, nf do
      if (seen[i] and ('=' .. seen[i]) or '') ~= ARGV[base + i] then return {'changed'} end
    end
  end
end

-- The shared keys it writes, planted as another type, would fail it midway: refused before any write.
for k, kind in pairs({[1] = 'zset', [2] = 'zset', [3] = 'hash', [4] = 'hash', [6] = 'hash'}) do
  local found = redis.call('TYPE', KEYS[k]).ok
  if found ~= kind and found ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' holds a ' .. found)
  end
end
if c.cap then
  local new = 0
  for _, w in ipairs(writes) do if w.new then new = new + 1 end end
  if new > 0 and redis.call('ZCARD', KEYS[1]) + new > tonumber(c.cap) then return {'cap'} end
end
if #c.calendars > 0 then
  local scores = redis.call('ZMSCORE', KEYS[5], unpack(c.calendars))
  for i = 1, #c.calendars do
    if not scores[i] then return {'calendar', c.calendars[i]} end
  end
end

-- The scheduler sleeps until the earliest due score at most: only a score earlier than that needs it woken.
local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local first = head[2] and tonumber(head[2])
local wake = false

-- Index, due set, template and calendar counts: one command each for all the writes (args in slices).
local function each_slice(head_args, items, call)
  for start = 1, #items, 1000 do
    local args = {unpack(head_args)}
    for i = start, math.min(start + 999, #items) do args[#args + 1] = items[i] end
    call(args)
  end
end
local index, due, not_due, refs, new_templates, calendar_refs = {}, {}, {}, {}, {}, {}
local function count(counts, key, n) counts[key] = (counts[key] or 0) + n end
for _, w in ipairs(writes) do
  index[#index + 1], index[#index + 2] = 0, w.id
  if w.due then
    due[#due + 1], due[#due + 2] = w.due, w.id
    if not first or tonumber(w.due) < first then wake = true end
  else
    not_due[#not_due + 1] = w.id
  end
  if w.template then
    if not refs[w.template[1]] then new_templates[#new_templates + 1] = w.template end
    count(refs, w.template[1], 1)
  end
  if w.release then count(refs, w.release, -1) end
  for _, calendar in ipairs(w.cal_add) do count(calendar_refs, calendar, 1) end
  for _, calendar in ipairs(w.cal_del) do count(calendar_refs, calendar, -1) end
end

each_slice({'ZADD', KEYS[1]}, index, function(args) redis.call(unpack(args)) end)
for n, w in ipairs(writes) do
  local key = KEYS[6 + n]
  if w.clean then redis.call('DEL', key) end
  local set = {}
  for name, value in pairs(w.set) do
    set[#set + 1] = name
    set[#set + 1] = value
  end
  redis.call('HSET', key, unpack(set))
  if #w.del > 0 then redis.call('HDEL', key, unpack(w.del)) end
end
each_slice({'ZADD', KEYS[2]}, due, function(args) redis.call(unpack(args)) end)
each_slice({'ZREM', KEYS[2]}, not_due, function(args) redis.call(unpack(args)) end)
for _, template in ipairs(new_templates) do redis.call('HSETNX', KEYS[3], template[1], template[2]) end
-- A template whose count falls to 0 goes with its last user.
local unused = {}
for template, n in pairs(refs) do
  if n ~= 0 and redis.call('HINCRBY', KEYS[4], template, n) <= 0 then
    redis.call('HDEL', KEYS[3], template)
    redis.call('HDEL', KEYS[4], template)
    unused[#unused + 1] = template
  end
end
for calendar, n in pairs(calendar_refs) do
  if n ~= 0 then redis.call('HINCRBY', KEYS[6], calendar, n) end
end
if c.audit then redis.call('XADD', c.audit.key, 'MAXLEN', '~', c.audit.maxlen, '*', unpack(c.audit.fields)) end
if wake then redis.call('PUBLISH', c.wake, #writes == 1 and writes[1].id or '*') end
local reply = {'ok', unused}
if c.answer then
  local after = redis.call('HMGET', KEYS[7], unpack(fields))
  for i = 1, nf do reply[#reply + 1] = after[i] end
end
if guess then
  reply[#reply + 1], reply[#reply + 2], reply[#reply + 3] = writes[1].new and '1' or '0', clock[1], clock[2]
end
return reply
