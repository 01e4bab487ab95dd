-- enqueue: push jobs of one name to its queue and wake sleeping fetchers.
--
-- KEYS[1]  queues        set   names of queues (Sidekiq's)
-- KEYS[2]  queue:<name>  list  LPUSH here; workers take from the right (FIFO)
-- ARGV[1]  job name
-- ARGV[2]  wake channel: PUBLISHed only when the queue goes from empty to non-empty,
--          so a busy queue costs no pub/sub traffic
-- ARGV[3..] job payloads (JSON), oldest first
--
-- Returns the queue length after the push.

redis.call('SADD', KEYS[1], ARGV[1])
local len = 0
local start = 3
while start <= #ARGV do
  local stop = math.min(start + 999, #ARGV)
  len = redis.call('LPUSH', KEYS[2], unpack(ARGV, start, stop))
  start = stop + 1
end
if len == #ARGV - 2 then
  redis.call('PUBLISH', ARGV[2], ARGV[1])
end
return len
