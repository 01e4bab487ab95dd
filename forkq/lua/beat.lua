-- beat: the liveness part of a pool's heartbeat.  Run with allow-oom (Redis >= 7) so a
-- pool that keeps working while Redis is at maxmemory is not taken for dead by
-- reapers; the rest of the heartbeat (observations, stats) is best effort.
--
-- KEYS[1]  pools        zset  identity -> last beat (what reapers judge)
-- ARGV[1]  identity
-- ARGV[2]  beat (epoch seconds)
--
-- Returns 1.

redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
