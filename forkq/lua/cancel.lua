-- cancel: find a job by jid wherever it is and stop it from running (Client.cancel).
-- A queued, scheduled or retrying job is removed; a running one (in some pool's
-- in-progress hash, live or dead) is marked in `cancelled` and announced on the wake
-- channel, so the pool running it is told at once (no per-job poll); the mark also
-- makes a requeue by recovery (ack.lua's 'q'/'u') drop the job: a job cancelled
-- while its child dies stays cancelled.
-- Every copy of the jid is handled (a jid can be held twice: a recovered job whose
-- first run goes on, or a client pushing one jid twice): every waiting copy is
-- removed, and a running copy is found under its field `<jid>` or `<jid>#<n>`
-- (fetch.lua's suffix); one announcement tells every pool (each cancels every slot
-- running that jid).
-- The caller lists the queues and the pools' hashes before this runs; a pool that
-- registered since is not among KEYS, so the script first checks the list against
-- `pools` and answers {'stale'}, changing nothing, when it is short: the caller lists
-- again.  A pool is in `pools` before it fetches (runtime.py beats first), so a job
-- it runs is never missed.  (A queue that appeared since is the caller's to check,
-- when nothing was found: SMEMBERS is not in the recommended ACL line.)
-- Cost: O(length) of the queues, schedule and retry it scans, and of the in-progress
-- hashes (a cancel is an operator's action, never on the hot path; the jid is only
-- inside the JSON).
--
-- KEYS[1]  cancelled               zset  jid -> when it was cancelled (Redis TIME)
-- KEYS[2]  schedule                zset
-- KEYS[3]  retry                   zset
-- KEYS[4]  result:<jid>            string: a kept result (result_ttl), if any
-- KEYS[5]  result-notify:<jid>     list: Enqueuer.wait's wake-up
-- KEYS[6]  pools                   zset  every registered pool (read only)
-- KEYS[7 .. 6+q]  queue:<name>     lists, every queue of the namespace (fair groups' too)
-- KEYS[7+q ..]    inprogress:<identity>  hashes, every pool's
-- ARGV[1]  jid
-- ARGV[2]  q: how many queue keys follow the first six
-- ARGV[3]  wake channel
-- ARGV[4]  cancel message prefix (PUBLISHed as prefix .. jid)
-- ARGV[5]  seconds a cancelled mark is kept
-- ARGV[6]  "1": locate only (Client.result): report where the job is, change nothing
-- ARGV[7]  the kept record of a cancelled job (forkq.results), written over an existing
--          one (a job with result_ttl that was retrying) and its waiters woken; a
--          running job's record is written by its pool when it stops
-- ARGV[8]  in-progress key prefix ("{ns}:inprogress:"): identity -> its hash's name
--
-- Every cancelled jid (whatever its state) is marked in `cancelled`, which is also
-- how Client.result tells "cancelled" from "unknown" for jobs without a result_ttl.
--
-- Returns {state, payload, ...}: state 'running' (a copy runs; the waiting copies
-- removed follow, possibly none), or 'queued', 'scheduled' or 'retrying' (where the
-- first copy was) followed by every removed payload (the caller releases their
-- unique guard and batch count); {'stale'} when KEYS missed a pool; an
-- empty array when the jid is nowhere (unknown or already finished).
-- In locate mode: {state, ''} (the first place found), {'stale'} or {}.

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

-- The list the caller made must hold every registered pool.
local listed = {}
for k = 7 + q, #KEYS do listed[KEYS[k]] = true end
for _, identity in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do
  if not listed[ARGV[8] .. identity] then return {'stale'} end
end

local suffix = jid .. '#'
local function holds(hash)
  if redis.call('HEXISTS', hash, jid) == 1 then return true end
  for _, field in ipairs(redis.call('HKEYS', hash)) do
    if string.sub(field, 1, #suffix) == suffix and string.find(field, '^%d+$', #suffix + 1) then
      return true
    end
  end
  return false
end

local running = false
for k = 7 + q, #KEYS do
  if holds(KEYS[k]) then
    if locate then return {'running', ''} end
    running = true
    break
  end
end

local CHUNK = 1000
local first = nil
local removed = {}
for k = 7, 6 + q do
  local start = 0
  while true do
    local items = redis.call('LRANGE', KEYS[k], start, start + CHUNK - 1)
    local kept = #items
    for _, payload in ipairs(items) do
      if is_it(payload) then
        if locate then return {'queued', ''} end
        redis.call('LREM', KEYS[k], 1, payload)
        kept = kept - 1
        first = first or 'queued'
        removed[#removed + 1] = payload
      end
    end
    if #items < CHUNK then break end
    start = start + kept  -- what was removed from this window shifted the rest left
  end
end

local zsets = {{KEYS[2], 'scheduled'}, {KEYS[3], 'retrying'}}
for _, z in ipairs(zsets) do
  local start = 0
  while true do
    local items = redis.call('ZRANGE', z[1], start, start + CHUNK - 1)
    local kept = #items
    for _, payload in ipairs(items) do
      if is_it(payload) then
        if locate then return {z[2], ''} end
        redis.call('ZREM', z[1], payload)
        kept = kept - 1
        first = first or z[2]
        removed[#removed + 1] = payload
      end
    end
    if #items < CHUNK then break end
    start = start + kept
  end
end

if running then
  mark()
  redis.call('PUBLISH', ARGV[3], ARGV[4] .. jid)
  return {'running', unpack(removed)}
end
if first then
  ended()
  return {first, unpack(removed)}
end
return {}
