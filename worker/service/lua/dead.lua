-- Move a frame that cannot be decided to the dead-letter stream, exactly once.
-- KEYS: 1 frames stream, 2 dead stream
-- ARGV: 1 group, 2 frame entry id, 3 dead-letter event JSON, 4 stream maxlen,
--       5.. the original entry's field/value pairs (kept so nothing is lost)
-- Returns 1 dead-lettered, 0 already acknowledged by another worker.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XDEL', KEYS[1], ARGV[2])
local entry = {'event', ARGV[3]}
for i = 5, #ARGV, 2 do
  entry[#entry + 1] = 'frame_' .. ARGV[i]
  entry[#entry + 1] = ARGV[i + 1]
end
local maxlen = tonumber(ARGV[4])
if maxlen > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(entry))
else
  redis.call('XADD', KEYS[2], '*', unpack(entry))
end
return 1
