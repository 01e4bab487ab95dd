-- fetch: take up to `want` ready jobs for one pool, across its job names, atomically
-- recording each taken job in the pool's in-progress hash (reliable fetch) and,
-- for names with max_concurrency, adding a lease.  Also reports when the next
-- scheduled/retry job is due, so idle pools need no separate poller.
--
-- KEYS[1]  inprogress:<identity>   hash  field -> job JSON
-- KEYS[2]  schedule                zset  read only: earliest score
-- KEYS[3]  retry                   zset  read only: earliest score
-- KEYS[4..] one triple per job name, in the pool's fixed order:
--          queue:<name> (list), paused:<name> (string), lease:<name> (zset)
-- KEYS[last] fence:<identity>     string: present once a reaper claimed this pool; then
--          nothing is taken and the reply is {"fenced"}: the pool was frozen, not
--          dead, and must stop instead of running jobs now owned by others
-- ARGV[1]  want: maximum number of jobs to take
-- ARGV[2]  now (epoch seconds): leases that expired before it are dropped
-- ARGV[3]  identity: lease members are "<identity>:<field>"
-- ARGV[4]  lease expiry (epoch seconds) for leases taken now
-- ARGV[5]  start: 0-based position of the name to try first (the caller's priority
--          pick); the others follow in cyclic order.  The KEYS never change for a
--          pool, so the caller can send them pre-encoded.
-- ARGV[6]  "1" if the pool may take a suspect job now, "0" if it holds one already.
--          A suspect is a job whose pool died under it twice or more ("recovered"
--          >= ARGV[8]): it may be what kills pools, so a pool runs at most one at a time,
--          and jobs that merely shared a pool with it are not buried with it.
--          Suspects this call may not take go back to the head of their queue.
-- ARGV[7]  wake channel: PUBLISHed when suspects were put back, for other pools
-- ARGV[8]  suspect threshold: "recovered" at or above it makes a suspect (scripts.SUSPECT_AFTER)
-- ARGV[9..] max_concurrency per name, same order as the triples (0 = unlimited)
--
-- Returns {next_due, idx1, field1, payload1, idx2, field2, payload2, ...}: next_due is
-- the earliest score in schedule or retry as a string ("" when both are empty), so a
-- caller can promote what is due now and sleep exactly until the next one; idx is the
-- 1-based position of the job's name in the triples; field is the in-progress field: the jid ("<jid>#2"
-- when that jid is already held), or "malformed:<sha1>" for an entry with no jid.

local want = tonumber(ARGV[1])
local now = ARGV[2]
local identity = ARGV[3]
local lease_until = ARGV[4]
local out = {''}
if redis.call('EXISTS', KEYS[#KEYS]) == 1 then return {'fenced'} end
local names = (#KEYS - 4) / 3
local may_take_suspect = ARGV[6] == '1'
local suspect_after = tonumber(ARGV[8])
-- "{ns}:schedule" minus "schedule" is the namespace prefix; a queue key is
-- prefix .. "queue:" .. name.
local name_at = #KEYS[2] - #'schedule' + #'queue:' + 1

-- Only payloads that mention "recovered" at all pay a decode; the field is read
-- from the decoded top level (never by pattern: args may hold that text too).
local function is_suspect(payload)
  if not string.find(payload, '"recovered"', 1, true) then return false end
  local ok, data = pcall(cjson.decode, payload)
  if not ok or type(data) ~= 'table' then return false end
  local recovered = data['recovered']
  return type(recovered) == 'number' and recovered >= suspect_after
end

-- The in-progress field of a taken job: its jid when that is plain printable ASCII
-- (forkq's and Sidekiq's are hex), else a digest, so a field is always valid UTF-8
-- and short (cjson turns an escaped lone surrogate into bytes that are not UTF-8).
local function plain(jid)
  return jid ~= '' and #jid <= 200 and not string.find(jid, '[^\32-\126]')
end

local function jid_of(payload)
  local jid = string.match(payload, '^{"jid":"([^"\\]+)"')
  if jid and plain(jid) then return jid end
  local ok, data = pcall(cjson.decode, payload)
  if ok and type(data) == 'table' and type(data['jid']) == 'string' and plain(data['jid']) then
    return data['jid']
  end
  return 'malformed:' .. redis.sha1hex(payload)
end

-- 1. Take jobs, queue by queue, in the caller's order.
local taken = {}   -- {name index, field, payload, leased}
local start = tonumber(ARGV[5])
for step = 0, names - 1 do
  if want <= 0 then break end
  local i = (start + step) % names + 1
  local base = 3 * i + 1
  -- LLEN first: an idle poll costs one command per empty queue.
  if redis.call('LLEN', KEYS[base]) > 0 and redis.call('EXISTS', KEYS[base + 1]) == 0 then
    local take = want
    local maxc = tonumber(ARGV[8 + i])
    if maxc > 0 then
      redis.call('ZREMRANGEBYSCORE', KEYS[base + 2], '-inf', now)
      local free = maxc - redis.call('ZCARD', KEYS[base + 2])
      if free < take then take = free end
    end
    if take > 0 then
      local aside = {}
      while take > 0 and #aside < 16 do
        local got = redis.call('RPOP', KEYS[base], take)
        if not got then break end
        for _, payload in ipairs(got) do
          if is_suspect(payload) and not may_take_suspect then
            aside[#aside + 1] = payload
          else
            if is_suspect(payload) then may_take_suspect = false end
            taken[#taken + 1] = {i, jid_of(payload), payload, maxc > 0}
            take = take - 1
            want = want - 1
          end
        end
      end
      if #aside > 0 then
        -- Back to the head, in their order, for a pool that holds no suspect.
        for k = #aside, 1, -1 do redis.call('RPUSH', KEYS[base], aside[k]) end
        redis.call('PUBLISH', ARGV[7], string.sub(KEYS[base], name_at))
      end
    end
  end
end

if #taken > 0 then
  -- 2. In-progress fields are jids; two entries sharing a jid (a producer that pushed
  --    the same job twice) must not overwrite each other, or one outcome is lost.
  --    One HMGET finds collisions with jobs already held; suffixes make them unique.
  local fields = {}
  for k, t in ipairs(taken) do fields[k] = t[2] end
  local existing = redis.call('HMGET', KEYS[1], unpack(fields))
  local used = {}
  local hset = {}
  for k, t in ipairs(taken) do
    local field = t[2]
    if existing[k] or used[field] then
      local n = 2
      while used[field .. '#' .. n] or redis.call('HEXISTS', KEYS[1], field .. '#' .. n) == 1 do
        n = n + 1
      end
      field = field .. '#' .. n
    end
    used[field] = true
    hset[#hset + 1] = field
    hset[#hset + 1] = t[3]
    if t[4] then
      redis.call('ZADD', KEYS[3 * t[1] + 3], lease_until, identity .. ':' .. field)
    end
    out[#out + 1] = t[1]
    out[#out + 1] = field
    out[#out + 1] = t[3]
  end
  redis.call('HSET', KEYS[1], unpack(hset))
end

-- Scores travel as strings: a Lua number would be truncated to an integer reply.
local next_due = nil
for k = 2, 3 do
  local first = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
  if first[2] and (next_due == nil or tonumber(first[2]) < tonumber(next_due)) then
    next_due = first[2]
  end
end
if next_due then out[1] = next_due end
return out
