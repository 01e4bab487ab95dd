-- batch_cancel: a waiting member of a batch was cancelled (Client.cancel removed it
-- from its queue, schedule or retry): it ended without succeeding, so its batch
-- counts it dead, and if nothing of the batch is pending any more its callbacks are
-- pushed, each once (the same rule as ack.lua and batch_push.lua).
--
-- KEYS[1]  queues         set   names of queues (Sidekiq's), for a callback's queue
-- KEYS[2]  batch:<bid>    hash  see batch_push.lua
-- ARGV[1]  wake channel: PUBLISHed when a callback's queue goes from empty to non-empty
-- ARGV[2]  queue key prefix ("<prefix>queue:"): where a callback job is pushed
-- ARGV[3]  seconds a finished batch is kept (its hash's TTL)
--
-- Returns the batch's pending count after it (-1: the batch is unknown or finished).

local bkey = KEYS[2]
local pending = tonumber(redis.call('HGET', bkey, 'pending'))
if not pending or pending <= 0 then return -1 end
redis.call('HINCRBY', bkey, 'failures', 1)
redis.call('HINCRBY', bkey, 'dead', 1)
pending = redis.call('HINCRBY', bkey, 'pending', -1)
if pending > 0 then return pending end

local t = redis.call('TIME')
local stamp = string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1000000)
local function push(queue, payload)
  redis.call('SADD', KEYS[1], queue)
  if redis.call('LPUSH', ARGV[2] .. queue, payload) == 1 then
    redis.call('PUBLISH', ARGV[1], queue)
  end
end
local st = redis.call('HMGET', bkey, 'complete_queue', 'complete_job', 'complete_at')
if st[1] and st[1] ~= '' and not st[3] then
  redis.call('HSET', bkey, 'complete_at', stamp)
  push(st[1], st[2])
end
-- on_success never fires: this member did not succeed.
redis.call('EXPIRE', bkey, ARGV[3])
return 0
