-- enqueue: push jobs of one name to its queue and wake as many idle pools as there
-- are jobs (not every pool: with 16 idle pools one job must cost one fetch, not 16).
--
-- KEYS[1]  queues        set   names of queues (Sidekiq's)
-- KEYS[2]  queue:<name>  list  LPUSH here; workers take from the right (FIFO)
-- KEYS[3]  idle:<name>   zset  pools whose last fetch found this queue empty with
--          slots free (member = pool identity, score 0; written by fetch.lua)
-- ARGV[1]  job name
-- ARGV[2]  wake channel (every pool listens): PUBLISHed only when the queue goes from
--          empty to non-empty and no registered idle pool took the wake, so pools that
--          never register (an older forkq) and a namespace whose idle pools all died
--          still get one; a busy queue costs no pub/sub traffic
-- ARGV[3]  a pool's own wake channel is this prefix .. its identity
-- ARGV[4..] job payloads (JSON), oldest first
--
-- One registered pool is woken per job pushed, each with ARGV[1] on its own channel;
-- they stay registered (a pool leaves when a fetch fills it, fetch.lua), so a trickle
-- costs no registry write per job.  A pool that no longer listens (PUBLISH reaches
-- nobody: it died) is removed and the next one is taken, so a dead pool never
-- swallows a wake.
--
-- Returns the queue length after the push.

redis.call('SADD', KEYS[1], ARGV[1])
local len = 0
local start = 4
local pushed = #ARGV - 3
while start <= #ARGV do
  local stop = math.min(start + 999, #ARGV)
  len = redis.call('LPUSH', KEYS[2], unpack(ARGV, start, stop))
  start = stop + 1
end
--@include _wake
local woken = wake_registered(KEYS[3], ARGV[3], ARGV[1], pushed, nil)
if woken == 0 and len == pushed then
  redis.call('PUBLISH', ARGV[2], ARGV[1])
end
return len
