-- Rollup claim: one process writes each minute's chart summary, and minutes only move forward.
-- KEYS: the last claimed minute (string).
-- ARGV: this minute (epoch minutes), seconds the claim is kept.
-- Returns 1 when the caller is to write this minute's summary, 0 when this minute (or a later one,
-- from a host whose clock runs ahead) is claimed already.
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
if last >= tonumber(ARGV[1]) then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
