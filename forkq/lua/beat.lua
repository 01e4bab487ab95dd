-- beat: the liveness part of a heartbeat, for one pool (its own beat) or for every
-- child of a master (who knows they are alive: see heartbeat.py).  Scores are Redis's
-- TIME, so reapers on hosts with other clocks judge them alike.  Run with allow-oom
-- (Redis >= 7) so a pool that keeps working while Redis is at maxmemory is not taken
-- for dead by reapers; the rest of the heartbeat (observations, stats) is best effort.
--
-- KEYS[1]          pools                    zset  identity -> last beat (what reapers judge)
-- KEYS[2..1+n]     inprogress:<identity_i>  hash  the jobs each pool holds
-- KEYS[2+n..]      lease:<name>             zset  one per job name with max_concurrency
-- ARGV[1]  n: number of pools beaten for
-- ARGV[2]  lease TTL in seconds: the leases of held jobs are renewed to TIME + this
-- ARGV[3]  "XX": only refresh pools still registered (a master never re-registers a
--          pool that stopped or was claimed); "": register
-- ARGV[4..3+n]     identities
-- ARGV[4+n..3+2n]  lease member prefixes ("<identity>:"), same order
-- ARGV[4+2n]       the namespace's key prefix when the pools have names with
--                  group_concurrency (absent otherwise): the group leases of held jobs
--                  of fair groups, glease:<name>:<group> (keys.py's names), are renewed
--                  too (only members that exist: XX)
--
-- Returns Redis's TIME {seconds, microseconds} (the caller's clock follows it).

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local n = tonumber(ARGV[1])
local beat = string.format('%.6f', now)
local lease_until = string.format('%.6f', now + tonumber(ARGV[2]))
local leases = #KEYS - 1 - n
local gprefix = ARGV[4 + 2 * n]
--@include _groups
for i = 1, n do
  local identity = ARGV[3 + i]
  local registered = ARGV[3] ~= 'XX' or redis.call('ZSCORE', KEYS[1], identity) ~= false
  if registered then
    redis.call('ZADD', KEYS[1], beat, identity)
  end
  if registered and leases > 0 then
    local fields = redis.call('HKEYS', KEYS[1 + i])
    local prefix = ARGV[3 + n + i]
    for _, field in ipairs(fields) do
      for k = 2 + n, #KEYS do
        redis.call('ZADD', KEYS[k], 'XX', lease_until, prefix .. field)
      end
    end
  end
  if registered and gprefix then
    local held = redis.call('HGETALL', KEYS[1 + i])
    local prefix = ARGV[3 + n + i]
    for k = 1, #held, 2 do
      local payload = held[k + 1]
      if string.find(payload, '"group"', 1, true) then
        local ok, data = pcall(cjson.decode, payload)
        if ok and type(data) == 'table' and valid_group(data['group']) then
          local q = data['queue']
          if type(q) ~= 'string' or q == '' then q = data['class'] end
          if type(q) == 'string' then
            redis.call('ZADD', gprefix .. 'glease:' .. q .. ':' .. data['group'], 'XX', lease_until,
                       prefix .. held[k])
          end
        end
      end
    end
  end
end
return clock
