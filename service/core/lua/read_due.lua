-- Read due: the schedules due by a time, with what firing needs of each, in one call and one reply.
-- KEYS: the due zset (schedule ids scored by due time, epoch ms), the templates hash (id -> spec JSON).
-- ARGV: schedule hash prefix, the latest due score to read, the most schedules to read; optionally the
--       last member and score of the batch read before (a cursor): read after it while it is still there
--       with that score (not fired yet), else from the head (it has fired, and so has its batch).
-- Returns JSON [templates, rows]: each template the batch uses once, and per due schedule, earliest
-- first, seven values: id, due score, template number (1-based; 0 = no schedule hash or template,
-- -1 = a hash in the first release's layout), next due (field n), buffered due (b), call (a), updated (u).
-- One JSON string is parsed by Python's json C module; the same batch as RESP (seven elements per
-- schedule) costs redis-py's parser far more. Templates shared by many schedules travel once.
local limit, members = tonumber(ARGV[3]), nil
local after = ARGV[4] and redis.call('ZSCORE', KEYS[1], ARGV[4])
if after and tonumber(after) == tonumber(ARGV[5]) then
  -- By rank (O(log n) to the cursor); the members past the latest due score are cut off below.
  local rank = redis.call('ZRANK', KEYS[1], ARGV[4])
  local all, max = redis.call('ZRANGE', KEYS[1], rank + 1, rank + limit, 'WITHSCORES'), tonumber(ARGV[2])
  members = {}
  for i = 1, #all, 2 do
    if tonumber(all[i + 1]) > max then break end
    members[i], members[i + 1] = all[i], all[i + 1]
  end
else
  members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', 0, limit)
end
if #members == 0 then return '[[],[]]' end
local specs, numbers, rows = {}, {}, {}
for i = 1, #members, 2 do
  local v = redis.call('HMGET', ARGV[1] .. members[i], 't', 'n', 'b', 'a', 'u', 'spec')
  local template, n = v[1], 0
  if v[6] then
    n = -1
  elseif template then
    n = numbers[template]
    if not n then
      local spec = redis.call('HGET', KEYS[2], template)
      if spec then
        specs[#specs + 1] = spec
        n = #specs
      else
        n = 0
      end
      numbers[template] = n
    end
  end
  local r = #rows
  rows[r + 1], rows[r + 2], rows[r + 3], rows[r + 4] = members[i], members[i + 1], n, v[2] or ''
  rows[r + 5], rows[r + 6], rows[r + 7] = v[3] or '', v[4] or '', v[5] or ''
end
return cjson.encode({specs, rows})
