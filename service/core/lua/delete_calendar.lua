-- Delete a calendar unless schedules skip by it.
-- KEYS: calendar hash, calendar index zset, refs hash (calendar id -> schedules naming it), declared set.
-- ARGV: calendar id.
-- Returns -1 when there is no such calendar, the number of schedules naming it (> 0: not deleted),
-- or 0 when it was deleted.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local used = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if used > 0 then return used end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
return 0
