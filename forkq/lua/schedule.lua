-- schedule: put jobs in the schedule set, due at a time by Redis's clock, and re-arm
-- sleeping fetchers when this becomes the earliest due time (they sleep exactly until
-- the earliest one they know of, so they must hear about an earlier one).
--
-- KEYS[1]  schedule   zset  member = job JSON, score = due time (epoch seconds)
-- KEYS[2]  retry      zset  read only: its earliest score also arms fetchers
-- ARGV[1]  wake channel
-- ARGV[2]  due message: PUBLISHed on the wake channel to re-arm every fetcher
-- ARGV[3]  "in": due ARGV[4] seconds after Redis's TIME; "at": due at epoch ARGV[4]
-- ARGV[4]  seconds
-- ARGV[5..] job payloads (JSON)
--
-- Returns the due time (epoch seconds, as a string).

local score, s = tonumber(ARGV[4]), ARGV[4]
if ARGV[3] == 'in' then
  local clock = redis.call('TIME')
  score = tonumber(clock[1]) + tonumber(clock[2]) / 1000000 + score
  s = string.format('%.6f', score)
end
local earliest = nil
for k = 1, 2 do
  local first = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
  if first[2] and (earliest == nil or tonumber(first[2]) < earliest) then
    earliest = tonumber(first[2])
  end
end
-- One ZADD per 1000 jobs (enqueue_in_many / enqueue_at_many send thousands).
local pairs_ = {}
for i = 5, #ARGV do
  pairs_[#pairs_ + 1] = s
  pairs_[#pairs_ + 1] = ARGV[i]
  if #pairs_ >= 2000 then
    redis.call('ZADD', KEYS[1], unpack(pairs_))
    pairs_ = {}
  end
end
if #pairs_ > 0 then redis.call('ZADD', KEYS[1], unpack(pairs_)) end
if earliest == nil or score < earliest then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return s
