-- Take a bag whose lease expired: it goes back to the pool, and the asking operator gets it.
-- KEYS: 1 review stream, 2 the bag's lease, 3 the operator's holding key,
--       4 station counters hash, 5 the pool's taken-bags hash
-- ARGV: 1 group (the pool), 2 consumer (the operator), 3 min idle ms (the lease),
--       4 review entry id ("" for a TIP bag), 5 new lease value, 6 lease ms, 7 bag id,
--       8 counter field of the pool's returns
-- Returns 1 taken (one return counted), 0 the bag is still leased,
--         -1 the entry is no longer pending or was delivered too recently,
--         2 the operator already holds a bag (nothing written in the last three cases).
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 2
end
if ARGV[4] ~= '' then
  -- XCLAIM checks the idle time itself, so two operators cannot both claim one entry.
  local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'JUSTID')
  if #claimed == 0 then
    return -1
  end
end
redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[6])
redis.call('SET', KEYS[3], ARGV[7], 'PX', ARGV[6])
redis.call('HSET', KEYS[5], ARGV[7], ARGV[4])
redis.call('HINCRBY', KEYS[4], ARGV[8], 1)
return 1
