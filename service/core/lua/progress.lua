-- Progress: store a running job's latest progress in its hash, in one call without a read round trip.
-- KEYS: the job hash.
-- ARGV: the progress as JSON text (the caller caps its size).
-- A job whose hash is gone (deleted while it ran) is left alone: no stub hash is created.
-- Returns 1 when stored, 0 when the job is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then
    return 0
end
redis.call('HSET', KEYS[1], 'progress', ARGV[1])
return 1
