-- Release a schedule template: fewer schedules use it; the last one out deletes it.
-- KEYS: templates hash (id -> spec JSON), template refs hash (id -> schedules using it).
-- ARGV: template id, how many schedules stopped using it (1 when absent; 0: only delete it if unused).
-- Returns the schedules still using it.
local n = tonumber(ARGV[2]) or 1
local left
if n == 0 then  -- HINCRBY by -0 is refused by Redis 6.2 ("-0" is not an integer there)
  left = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
else
  left = redis.call('HINCRBY', KEYS[2], ARGV[1], -n)
end
if left <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return left
