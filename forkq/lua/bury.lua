-- bury: move one entry of schedule or retry that is not a job to dead, atomically.
-- The ZREM guards the move, so promoters on many hosts bury an entry once.
--
-- KEYS[1]  schedule or retry   zset  the entry's set
-- KEYS[2]  dead                zset
-- ARGV[1]  the member as stored
-- ARGV[2]  the dead entry to write (MalformedPayload, raw bytes kept)
-- ARGV[3]  its score (epoch seconds)
--
-- Returns 1 when buried, 0 when the member was gone already.

if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
  return 1
end
return 0
