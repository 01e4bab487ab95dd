-- cancel: find one job by jid wherever it is and stop it from running (Client.cancel).
-- A queued, scheduled or retrying job is removed; a running one (in some pool's
-- in-progress hash, live or dead) is marked in `cancelled` and announced on the wake
-- channel, so the pool running it is told at once (no per-job poll); the mark also
-- makes a requeue by recovery (ack.lua's 'q'/'u') drop the job: a job cancelled
-- while its child dies stays cancelled.
-- Cost: O(length) of the queues, schedule and retry it scans (a cancel is an
-- operator's action, never on the hot path; the jid is only inside the JSON).
--
-- KEYS[1]  cancelled               zset  jid -> when it was cancelled (Redis TIME)
-- KEYS[2]  schedule                zset
-- KEYS[3]  retry                   zset
-- KEYS[4]  result:<jid>            string: a kept result (result_ttl), if any
-- KEYS[5]  result-notify:<jid>     list: Enqueuer.wait's wake-up
-- KEYS[6 .. 5+q]  queue:<name>     lists, every queue of the namespace
-- KEYS[6+q ..]    inprogress:<identity>  hashes, every pool's
-- ARGV[1]  jid
-- ARGV[2]  q: how many queue keys follow the first three
-- ARGV[3]  wake channel
-- ARGV[4]  cancel message prefix (PUBLISHed as prefix .. jid)
-- ARGV[5]  seconds a cancelled mark is kept
-- ARGV[6]  "1": locate only (Client.result): report where the job is, change nothing
-- ARGV[7]  the kept record of a cancelled job (forkq.results), written over an existing
--          one (a job with result_ttl that was retrying) and its waiters woken; a
--          running job's record is written by its pool when it stops
--
-- Every cancelled jid (whatever its state) is marked in `cancelled`, which is also
-- how Client.result tells "cancelled" from "unknown" for jobs without a result_ttl.
--
-- Returns {state, payload}: state 'running' (payload ''), 'queued', 'scheduled' or
-- 'retrying' (the removed payload, so the caller can release its unique guard), or
-- an empty array when the jid is nowhere (unknown or already finished).
-- In locate mode the payload is always ''.

local jid = ARGV[1]
local q = tonumber(ARGV[2])
local locate = ARGV[6] == '1'

local function mark()
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  redis.call('ZADD', KEYS[1], now, jid)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[5]))
end

local function ended()
  mark()
  local ttl = redis.call('TTL', KEYS[4])
  if ttl > 0 then
    redis.call('SET', KEYS[4], ARGV[7], 'KEEPTTL')
    redis.call('DEL', KEYS[5])
    redis.call('RPUSH', KEYS[5], '1')
    redis.call('EXPIRE', KEYS[5], ttl)
  end
end
local needle = '"jid":"' .. jid .. '"'

local function is_it(payload)
  if not string.find(payload, needle, 1, true) then return false end
  local ok, data = pcall(cjson.decode, payload)
  return ok and type(data) == 'table' and data['jid'] == jid
end

for k = 6 + q, #KEYS do
  if redis.call('HEXISTS', KEYS[k], jid) == 1 then
    if locate then return {'running', ''} end
    mark()
    redis.call('PUBLISH', ARGV[3], ARGV[4] .. jid)
    return {'running', ''}
  end
end

local CHUNK = 1000
for k = 6, 5 + q do
  local start = 0
  while true do
    local items = redis.call('LRANGE', KEYS[k], start, start + CHUNK - 1)
    for _, payload in ipairs(items) do
      if is_it(payload) then
        if locate then return {'queued', ''} end
        redis.call('LREM', KEYS[k], 1, payload)
        ended()
        return {'queued', payload}
      end
    end
    if #items < CHUNK then break end
    start = start + CHUNK
  end
end

local zsets = {{KEYS[2], 'scheduled'}, {KEYS[3], 'retrying'}}
for _, z in ipairs(zsets) do
  local start = 0
  while true do
    local items = redis.call('ZRANGE', z[1], start, start + CHUNK - 1)
    for _, payload in ipairs(items) do
      if is_it(payload) then
        if locate then return {z[2], ''} end
        redis.call('ZREM', z[1], payload)
        ended()
        return {z[2], payload}
      end
    end
    if #items < CHUNK then break end
    start = start + CHUNK
  end
end
return {}
