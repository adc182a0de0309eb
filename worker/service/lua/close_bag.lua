-- Close one bag exactly once: its event, its review entry, its artefacts' lifetimes.
-- KEYS: 1 bag state hash, 2 open-bags sorted set, 3 bags stream, 4 review stream,
--       5.. artefact keys of the bag's views (originals, erased images, heat-maps)
-- ARGV: 1 bag id, 2 bag event JSON, 3 views the caller saw decided ("seen"),
--       4 "1" if the bag goes to review, 5 review TTL s, 6 closed-marker TTL s,
--       7 stream maxlen, 8 (optional) a state field and 9 the value the caller expects in it
-- Returns 1 closed now, 0 already closed (nothing written),
--         2 stale: more views arrived since the caller read the state (read again),
--         3 not as expected: field 8 does not hold value 9 (the caller's own view was
--           not the one recorded, e.g. its publish was discarded); nothing written.
if redis.call('HGET', KEYS[1], 'closed') then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
local seen = redis.call('HGET', KEYS[1], 'seen') or '0'
if seen ~= ARGV[3] then
  return 2
end
if ARGV[8] and redis.call('HGET', KEYS[1], ARGV[8]) ~= ARGV[9] then
  return 3
end
local maxlen = tonumber(ARGV[7])
local function append(stream, event)
  if maxlen > 0 then
    return redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'event', event)
  end
  return redis.call('XADD', stream, '*', 'event', event)
end
-- What stays of a closed bag is its marker, so a late view is recognised and ignored.
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'closed', '1')
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('ZREM', KEYS[2], ARGV[1])
append(KEYS[3], ARGV[2])
if ARGV[4] == '1' then
  append(KEYS[4], ARGV[2])
  for i = 5, #KEYS do
    redis.call('EXPIRE', KEYS[i], ARGV[5])
  end
else
  -- A clear bag goes to nobody: its originals are not kept.
  for i = 5, #KEYS do
    redis.call('DEL', KEYS[i])
  end
end
return 1
