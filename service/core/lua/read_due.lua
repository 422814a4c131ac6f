-- Read due: the schedules due by a time, with what firing needs of each, in one call and one reply.
-- KEYS: the due zset (schedule ids scored by due time, epoch ms).
-- ARGV: schedule hash prefix, the latest due score to read, the most schedules to read.
-- Returns JSON [specs, rows]: each distinct spec once, and per due schedule, earliest first, five
-- values: id, due score, spec number (1-based; 0 = no schedule hash), next_due, buffered_due.
-- One JSON string is parsed by Python's json C module; the same batch as RESP (five elements per
-- schedule) costs redis-py's parser far more. Specs shared by many schedules travel once.
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
if #members == 0 then return '[[],[]]' end
local specs, numbers, rows = {}, {}, {}
for i = 1, #members, 2 do
  local values = redis.call('HMGET', ARGV[1] .. members[i], 'spec', 'next_due', 'buffered_due')
  local spec, n = values[1], 0
  if spec then
    n = numbers[spec]
    if not n then
      specs[#specs + 1] = spec
      n = #specs
      numbers[spec] = n
    end
  end
  for _, v in ipairs({members[i], members[i + 1], n, values[2] or '', values[3] or ''}) do rows[#rows + 1] = v end
end
return cjson.encode({specs, rows})
