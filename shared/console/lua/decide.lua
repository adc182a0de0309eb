-- Record an operator's verdict on the bag they hold, exactly once, and end the lease.
-- KEYS: 1 the bag's lease, 2 the operator's holding key, 3 review stream,
--       4 verdicts stream, 5 the pool's taken-bags hash, 6 the pool's open-TIP sorted set,
--       7 station counters hash
-- ARGV: 1 the lease value the caller read (compare-and-delete), 2 group (the pool),
--       3 review entry id ("" for a TIP bag), 4 verdicts maxlen, 5 bag id,
--       6 n: how many counter fields follow, 7 .. 6+n counter fields to increment,
--       then the verdict record's field/value pairs
-- Returns {0, verdict entry id} recorded; {1} another operator holds the bag (or the
--         lease changed since it was read); {2} the lease expired (the bag is known to the
--         pool); {3} no such bag in this pool. Nothing is written unless it returns 0.
local lease = redis.call('GET', KEYS[1])
if not lease then
  if redis.call('HEXISTS', KEYS[5], ARGV[5]) == 1 then
    return {2}
  end
  return {3}
end
if lease ~= ARGV[1] then
  return {1}
end
if ARGV[3] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[2], ARGV[3])
end
redis.call('DEL', KEYS[1])
if redis.call('GET', KEYS[2]) == ARGV[5] then
  redis.call('DEL', KEYS[2])
end
redis.call('HDEL', KEYS[5], ARGV[5])
redis.call('ZREM', KEYS[6], ARGV[5])
local counters = tonumber(ARGV[6])
for i = 7, 6 + counters do
  redis.call('HINCRBY', KEYS[7], ARGV[i], 1)
end
local id = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 7 + counters))
return {0, id}
