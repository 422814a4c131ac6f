-- Read one schedule for a write: Redis's clock, its hash fields and its template, in one round trip.
-- KEYS: schedule hash, templates hash.
-- ARGV: the hash fields to read (service.schedules.store.FIELDS), the template id `t` first.
-- Returns {TIME seconds, TIME microseconds, the template's JSON (false when none), the fields...}.
-- A key of another type (planted) reads as no schedule: the write replaces it from a clean hash.
local clock = redis.call('TIME')
local fields = {}
if redis.call('TYPE', KEYS[1]).ok == 'hash' then fields = redis.call('HMGET', KEYS[1], unpack(ARGV)) end
local reply = {clock[1], clock[2], fields[1] and redis.call('HGET', KEYS[2], fields[1]) or false}
for i = 1, #ARGV do reply[#reply + 1] = fields[i] or false end
return reply
