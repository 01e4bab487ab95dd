-- enqueue_unique: enqueue (now or later) unless a job with the same unique key is
-- already queued or scheduled.  The guard is released when a worker takes the job.
--
-- KEYS[1]  queues                     set
-- KEYS[2]  queue:<name> or schedule   list (now) or zset (later)
-- KEYS[3]  unique:<name>:<args|key>   string guard, holds the jid
-- ARGV[1]  job name
-- ARGV[2]  wake channel
-- ARGV[3]  payload
-- ARGV[4]  guard TTL in seconds (delay + 24 h)
-- ARGV[5]  when a scheduled job is due: "+<seconds>" after Redis's TIME, or an epoch;
--          "" to enqueue now
-- ARGV[6]  jid (stored in the guard)
-- ARGV[7]  due message: PUBLISHed on the wake channel when a scheduled job becomes the
--          earliest in the schedule set, to re-arm fetchers sleeping until a later one
--
-- Returns 1 when enqueued, 0 when a unique job was already there.

if not redis.call('SET', KEYS[3], ARGV[6], 'NX', 'EX', ARGV[4]) then
  return 0
end
if ARGV[5] ~= '' then
  local score, s = tonumber(ARGV[5]), ARGV[5]
  if string.sub(ARGV[5], 1, 1) == '+' then
    local clock = redis.call('TIME')
    score = tonumber(clock[1]) + tonumber(clock[2]) / 1000000 + tonumber(string.sub(ARGV[5], 2))
    s = string.format('%.6f', score)
  end
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  redis.call('ZADD', KEYS[2], s, ARGV[3])
  if not first[2] or score < tonumber(first[2]) then
    redis.call('PUBLISH', ARGV[2], ARGV[7])
  end
  return 1
end
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('LPUSH', KEYS[2], ARGV[3]) == 1 then
  redis.call('PUBLISH', ARGV[2], ARGV[1])
end
return 1
