-- wake_idle: the waker's announcement (forkq/waker.py) of a queue written by a client
-- that publishes no wake (Sidekiq's Ruby client, a plain LPUSH): wake as many
-- registered idle pools as the queue holds jobs, as enqueue.lua does for its own
-- pushes, instead of every pool.
--
-- KEYS[1]  queue:<name>  list  read only (LLEN)
-- KEYS[2]  idle:<name>   zset  pools idle for this name (fetch.lua registers them);
--          one that no longer listens (PUBLISH reaches nobody) is removed
-- ARGV[1]  job name
-- ARGV[2]  wake channel (every pool listens): PUBLISHed when no registered pool
--          could be woken (pools that never register, or all of them gone)
-- ARGV[3]  a pool's own wake channel is this prefix .. its identity
--
-- Returns how many registered pools were woken (0 also when the queue is empty now).

local jobs = redis.call('LLEN', KEYS[1])
if jobs == 0 then return 0 end
--@include _wake
local woken = wake_registered(KEYS[2], ARGV[3], ARGV[1], jobs, nil)
if woken == 0 then
  redis.call('PUBLISH', ARGV[2], ARGV[1])
end
return woken
