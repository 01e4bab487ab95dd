-- repair_groups: give back their token to the fair groups of one name that lost it
-- (an entry deleted by hand from queue:<name>, e.g. from Sidekiq's Web UI, or the
-- queue key deleted): without its token a group is never served again.  A group that
-- is not parked and has no token in the queue gets one (at the head: it has waited),
-- or leaves groups:<name> if its list is empty.  The queue is read in windows
-- (LRANGE), once per call: an operator's tool (Client.repair_groups), not the hot path.
--
-- KEYS[1]  queue:<name>     list
-- KEYS[2]  groups:<name>    set
-- KEYS[3]  gparked:<name>   zset
-- ARGV[1]  job name
-- ARGV[2]  the prefix of its group lists ("<prefix>gqueue:<name>:", keys.py's)
-- ARGV[3]  wake channel: PUBLISHed when a token makes the queue non-empty
-- ARGV[4..] the groups to check (the members of groups:<name>, read by the caller)
--
-- Returns {repaired, dropped}.

--@include _groups

-- The tokens in the queue now.
local present = {}
local CHUNK = 1000
local start = 0
while true do
  local items = redis.call('LRANGE', KEYS[1], start, start + CHUNK - 1)
  for _, entry in ipairs(items) do
    if string.sub(entry, 1, 23) == '{"class":"forkq.group",' then present[entry] = true end
  end
  if #items < CHUNK then break end
  start = start + CHUNK
end

local repaired, dropped = 0, 0
for k = 4, #ARGV do
  local g = ARGV[k]
  local token = token_of(ARGV[1], g)
  if not present[token] and not redis.call('ZSCORE', KEYS[3], g) then
    if redis.call('LLEN', ARGV[2] .. g) > 0 then
      redis.call('SADD', KEYS[2], g)
      if redis.call('RPUSH', KEYS[1], token) == 1 then
        redis.call('PUBLISH', ARGV[3], ARGV[1])
      end
      present[token] = true
      repaired = repaired + 1
    elseif redis.call('SREM', KEYS[2], g) == 1 then
      dropped = dropped + 1
    end
  end
end
return {repaired, dropped}
