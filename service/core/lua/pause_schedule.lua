-- Pause a schedule: nothing fires until it is resumed.
-- KEYS: schedule hash, due set (schedule ids by next due time).
-- ARGV: schedule id, note, wake-up channel.
-- The hash is in today's layout (paused p, note m, next due n; see service.schedules.store) or, not
-- yet migrated, in the first release's (paused, note, next_due): each is paused in its own.
-- Returns 1 when paused, 0 when the schedule does not exist.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('HEXISTS', KEYS[1], 'spec') == 1 then
  redis.call('HSET', KEYS[1], 'paused', '1', 'note', ARGV[2], 'next_due', '')
else
  redis.call('HSET', KEYS[1], 'p', '1')
  if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'm', ARGV[2]) else redis.call('HDEL', KEYS[1], 'm') end
  redis.call('HDEL', KEYS[1], 'n')
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
