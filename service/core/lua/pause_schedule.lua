-- Pause a schedule: nothing fires until it is resumed.
-- KEYS: schedule hash, due set (schedule ids by next due time).
-- ARGV: schedule id, note, wake-up channel.
-- Returns 1 when paused, 0 when the schedule does not exist.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'paused', '1', 'note', ARGV[2], 'next_due', '')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
