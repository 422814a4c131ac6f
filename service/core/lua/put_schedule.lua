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
--       [2..] per write in turn, each of `fields` as read: "=" .. value, or "" when absent.
-- Returns {"changed"} when a hash is not as read (read again and retry), {"cap"}, {"calendar", id} when a
-- calendar is missing; else {"ok", [templates no schedule uses any more], then `fields` as written if answer}.
-- Checks come before the first write, and the first write (ZADD) is one a full Redis refuses, so a Redis
-- refusing writes (maxmemory, MISCONF, read-only) leaves everything as it was.
local c = cjson.decode(ARGV[1])
local fields, writes = c.fields, c.writes
local nf = #fields
for n, w in ipairs(writes) do
  -- A key of another type (planted) reads as no schedule, as in read_schedule.lua.
  local seen = redis.pcall('HMGET', KEYS[6 + n], unpack(fields))
  if seen.err then seen = {} end
  local base = 1 + (n - 1) * nf
  for i = 1, nf do
    if (seen[i] and ('=' .. seen[i]) or '') ~= ARGV[base + i] then return {'changed'} end
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
-- A template whose count falls to 0 is deleted by the caller (release_template.lua), unless reused meanwhile.
local unused = {}
for template, n in pairs(refs) do
  if n ~= 0 and redis.call('HINCRBY', KEYS[4], template, n) <= 0 then unused[#unused + 1] = template end
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
return reply
