-- Lease a bag to the operator it was just delivered to (or made for, a TIP bag).
-- The XREADGROUP that delivered the review entry is the take; this makes the holder known.
-- KEYS: 1 the bag's lease, 2 the operator's holding key, 3 the pool's taken-bags hash,
--       4 the pool's open-TIP sorted set (touched only for a TIP bag)
-- ARGV: 1 lease value (JSON: operator, entry id, queued and taken times), 2 lease ms,
--       3 bag id, 4 review entry id ("" for a TIP bag), 5 queued time ms (TIP bags)
-- Returns 1 leased, 0 the bag already has a holder, 2 the operator already holds a bag
--         (nothing written in either case).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 2
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
if ARGV[4] == '' then
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[3])
end
return 1
