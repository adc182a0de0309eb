-- One frame's decision, published atomically and exactly once, and recorded in its bag.
-- KEYS: 1 frames stream, 2 results stream, 3 alerts stream, 4 dedupe marker,
--       5 masked artefact, 6 heatmap artefact, 7 dead-letter stream,
--       8 original artefact, 9 bag state hash, 10 open-bags sorted set
-- ARGV: 1 group, 2 frame entry id, 3 event JSON, 4 "1" if threat, 5 alert channel,
--       6 artefact TTL s, 7 dedupe TTL s, 8 masked bytes, 9 heatmap bytes, 10 stream maxlen,
--       11 dead-letter JSON used if the frame id was decided before,
--       12 original bytes, 13 original TTL s (until the bag closes),
--       14 view index, 15 views in the bag, 16 view JSON (the bag's record of it),
--       17 bag deadline (ms since the epoch, from this view's capture),
--       18 bag state TTL s, 19 scanner id, 20 bag id,
--       21 this view's capture time (ms since the epoch)
-- Returns 0 already acknowledged by another worker (nothing written),
--         1 published, bag still open,
--         2 frame id already decided: no second decision; the entry goes to the
--           dead-letter stream so a re-sent or mislabelled frame is seen, not dropped,
--         {3, field, value, ...} published, and this view completes its bag: the bag's
--           state (HGETALL) follows, so the caller closes it without reading it again,
--         4 published, but its bag had closed already (the view changes nothing),
--         5 the view contradicts its bag (seen twice, other view count): dead-lettered.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XDEL', KEYS[1], ARGV[2])
local maxlen = tonumber(ARGV[10])
local function append(stream, ...)
  if maxlen > 0 then
    return redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', ...)
  end
  return redis.call('XADD', stream, '*', ...)
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  append(KEYS[7], 'event', ARGV[11])
  return 2
end
-- A view that contradicts its bag: the duplicate letter, re-worded (kind bad_bag).
local function conflict(reason)
  local letter = cjson.decode(ARGV[11])
  letter['reason'] = reason
  letter['kind'] = 'bad_bag'
  append(KEYS[7], 'event', cjson.encode(letter))
  return 5
end

local field = 'v:' .. ARGV[14]
local closed = redis.call('HGET', KEYS[9], 'closed')
if not closed then
  local declared = redis.call('HGET', KEYS[9], 'views')
  if declared and declared ~= ARGV[15] then
    return conflict('bag ' .. ARGV[20] .. ' has ' .. declared .. ' views; this frame says ' .. ARGV[15])
  end
  local other = redis.call('HGET', KEYS[9], field)
  if other then
    return conflict('view ' .. ARGV[14] .. ' of bag ' .. ARGV[20] .. ' was already decided (frame '
      .. cjson.decode(other)['frame_id'] .. ')')
  end
end

redis.call('SET', KEYS[4], ARGV[2], 'EX', ARGV[7])
append(KEYS[2], 'event', ARGV[3])
if ARGV[4] == '1' then
  append(KEYS[3], 'event', ARGV[3])
  redis.call('PUBLISH', ARGV[5], ARGV[3])
end
if ARGV[8] ~= '' then
  redis.call('SET', KEYS[5], ARGV[8], 'EX', ARGV[6])
end
if ARGV[9] ~= '' then
  redis.call('SET', KEYS[6], ARGV[9], 'EX', ARGV[6])
end
if closed then
  return 4
end

-- The original lives until its bag closes; the close extends it for review or drops it.
redis.call('SET', KEYS[8], ARGV[12], 'EX', ARGV[13])
redis.call('HSET', KEYS[9], field, ARGV[16], 'views', ARGV[15])
redis.call('HSETNX', KEYS[9], 'scanner_id', ARGV[19])
local first = redis.call('HGET', KEYS[9], 'first_ms')
if not first or tonumber(ARGV[21]) < tonumber(first) then
  redis.call('HSET', KEYS[9], 'first_ms', ARGV[21])
end
redis.call('EXPIRE', KEYS[9], ARGV[18])
local seen = redis.call('HINCRBY', KEYS[9], 'seen', 1)
-- The earliest capture of any view sets the deadline (LT: only ever moves earlier).
redis.call('ZADD', KEYS[10], 'LT', ARGV[17], ARGV[20])
if seen >= tonumber(ARGV[15]) then
  local state = redis.call('HGETALL', KEYS[9])
  table.insert(state, 1, 3)
  return state
end
return 1
