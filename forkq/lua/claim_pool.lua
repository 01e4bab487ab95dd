-- claim_pool: take over a pool that stopped beating, before recovering its jobs.
-- Compare-and-set on the beat a reaper judged stale, so a pool that was merely
-- slow and has beaten since is never robbed.
--
-- KEYS[1]  pools                 zset  identity -> last beat (epoch seconds)
-- KEYS[2]  processes             set   Sidekiq's live process identities
-- KEYS[3]  pool:<identity>       hash  gocraft heartbeat fields
-- KEYS[4]  <identity>            hash  Sidekiq process hash
-- KEYS[5]  <identity>:work       hash  running jobs (Sidekiq 7 name)
-- KEYS[6]  <identity>:workers    hash  running jobs (Sidekiq 6 name)
-- KEYS[7]  fence:<identity>      string set here: a claimed pool that resumes (it was
--                                 frozen, not dead) stops at its next fetch or ack
-- ARGV[1]  identity
-- ARGV[2]  expected beat score, or "" to claim whatever the score
-- ARGV[3]  fence TTL (seconds)
--
-- Returns 1 when claimed, 0 when the pool has beaten since (left alone).

if ARGV[2] ~= '' then
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not score or tonumber(score) ~= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5], KEYS[6])
redis.call('SET', KEYS[7], '1', 'EX', ARGV[3])
return 1
