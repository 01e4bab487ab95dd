-- batch_cancel: a waiting member of a batch was cancelled (Client.cancel removed it
-- from its queue, schedule or retry): it ended without succeeding, so its batch
-- counts it dead, and if nothing of the batch is pending any more its callbacks are
-- pushed, each once (lua/_batch_count.lua: the same rule as ack.lua and batch_push.lua).
--
-- KEYS[1]  queues         set   names of queues (Sidekiq's), for a callback's queue
-- KEYS[2]  batch:<bid>    hash  see batch_push.lua
-- ARGV[1]  wake channel: PUBLISHed when a callback's queue goes from empty to non-empty
-- ARGV[2]  queue key prefix ("<prefix>queue:"): where a callback job is pushed
-- ARGV[3]  seconds a finished batch is kept (its hash's TTL)
--
-- Returns the batch's pending count after it (-1: the batch is unknown or finished).

--@include _batch_count
local count = batch_counting(KEYS[1], ARGV[2], ARGV[3],
  function(queue) redis.call('PUBLISH', ARGV[1], queue) end)
-- One ended without success: a failure, dead (on_success can then never fire).
local pending = count(KEYS[2], {0, 1, 1, 1})
return pending < 0 and -1 or pending
