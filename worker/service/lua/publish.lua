-- One frame's decision, published atomically and exactly once.
-- KEYS: 1 frames stream, 2 results stream, 3 alerts stream, 4 dedupe marker,
--       5 masked artefact, 6 heatmap artefact, 7 dead-letter stream
-- ARGV: 1 group, 2 frame entry id, 3 event JSON, 4 "1" if threat, 5 alert channel,
--       6 artefact TTL s, 7 dedupe TTL s, 8 masked bytes, 9 heatmap bytes, 10 stream maxlen,
--       11 dead-letter JSON used if the frame id was decided before
-- Returns 1 published, 0 already acknowledged by another worker (nothing written),
--         2 frame id already decided: no second decision; the entry goes to the
--           dead-letter stream so a re-sent or mislabelled frame is seen, not dropped.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XDEL', KEYS[1], ARGV[2])
local maxlen = tonumber(ARGV[10])
local function append(stream, event)
  if maxlen > 0 then
    return redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'event', event)
  end
  return redis.call('XADD', stream, '*', 'event', event)
end
if redis.call('SET', KEYS[4], ARGV[2], 'NX', 'EX', ARGV[7]) == false then
  append(KEYS[7], ARGV[11])
  return 2
end
append(KEYS[2], ARGV[3])
if ARGV[4] == '1' then
  append(KEYS[3], ARGV[3])
  redis.call('PUBLISH', ARGV[5], ARGV[3])
end
if ARGV[8] ~= '' then
  redis.call('SET', KEYS[5], ARGV[8], 'EX', ARGV[6])
end
if ARGV[9] ~= '' then
  redis.call('SET', KEYS[6], ARGV[9], 'EX', ARGV[6])
end
return 1
