-- Write one schedule if it is still as its writer read it: the read-compare-write of a PUT (and of the
-- declared-file sync and resume) in one round trip, all of it or nothing, answering the hash as written.
-- KEYS: schedule hash, index zset, due zset, templates hash, template refs hash, calendar index zset,
--       calendar refs hash.
-- ARGV: [1] the write as JSON (numbers as strings):
--         fields   the hash fields read back (service.schedules.store.FIELDS)
--         id       schedule id               wake      wake-up channel (published when its due score is the earliest)
--         cap      refuse the write once the index holds this many (given for a new id only; absent: no cap)
--         calendars  ids that must be calendars
--         clean    delete the hash first (new, or a record that could not be read)
--         set      {field: value}            del       [fields to remove]
--         template [id, JSON] of a template it starts using (absent: same template as before)
--         release  id of the template it stops using (absent: none)
--         due      due-set score (absent: not due)
--         cal_add, cal_del  calendars it starts / stops naming
--       [2..] each of `fields` as read: "=" .. value, or "" when absent.
-- Returns {"changed"} when the hash is not as read (read again and retry), {"cap"}, {"calendar", id} when
-- a calendar is missing; else {"ok", schedules left using the released template (-1: none released),
-- then `fields` as written}.
-- Checks come before the first write, and the first write (ZADD) is one a full Redis refuses, so a Redis
-- refusing writes (maxmemory, MISCONF, read-only) leaves everything as it was.
local w = cjson.decode(ARGV[1])
local seen = {}  -- a key of another type (planted) reads as no schedule, as in read_schedule.lua
if redis.call('TYPE', KEYS[1]).ok == 'hash' then seen = redis.call('HMGET', KEYS[1], unpack(w.fields)) end
for i = 1, #w.fields do
  local now = seen[i] and ('=' .. seen[i]) or ''
  if now ~= ARGV[i + 1] then return {'changed'} end
end
if w.cap and redis.call('ZCARD', KEYS[2]) >= tonumber(w.cap) then return {'cap'} end
if #w.calendars > 0 then
  local scores = redis.call('ZMSCORE', KEYS[6], unpack(w.calendars))
  for i = 1, #w.calendars do
    if not scores[i] then return {'calendar', w.calendars[i]} end
  end
end

-- The shared hashes it counts in, planted as another type, would fail it midway: refused before any write.
for _, key in ipairs({KEYS[4], KEYS[5], KEYS[7]}) do
  local kind = redis.call('TYPE', key).ok
  if kind ~= 'hash' and kind ~= 'none' then return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. kind) end
end

-- The scheduler sleeps until the earliest due score at most: only a score earlier than that needs it woken.
local head = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
local wake = w.due and (#head == 0 or tonumber(w.due) < tonumber(head[2]))

redis.call('ZADD', KEYS[2], 0, w.id)
if w.clean then redis.call('DEL', KEYS[1]) end
local set = {}
for name, value in pairs(w.set) do
  set[#set + 1] = name
  set[#set + 1] = value
end
redis.call('HSET', KEYS[1], unpack(set))
if #w.del > 0 then redis.call('HDEL', KEYS[1], unpack(w.del)) end
if w.due then
  redis.call('ZADD', KEYS[3], w.due, w.id)
else
  redis.call('ZREM', KEYS[3], w.id)
end
if w.template then
  redis.call('HSETNX', KEYS[4], w.template[1], w.template[2])
  redis.call('HINCRBY', KEYS[5], w.template[1], 1)
end
local left = -1
if w.release then  -- the caller deletes it when no schedule uses it any more (release_template.lua)
  left = redis.call('HINCRBY', KEYS[5], w.release, -1)
end
for _, calendar in ipairs(w.cal_add) do redis.call('HINCRBY', KEYS[7], calendar, 1) end
for _, calendar in ipairs(w.cal_del) do redis.call('HINCRBY', KEYS[7], calendar, -1) end
if wake then redis.call('PUBLISH', w.wake, w.id) end
local reply = {'ok', left}
local after = redis.call('HMGET', KEYS[1], unpack(w.fields))
for i = 1, #w.fields do reply[#reply + 1] = after[i] end
return reply
