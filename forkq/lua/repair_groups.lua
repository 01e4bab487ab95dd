-- repair_groups: give back their token to the fair groups of one name that lost it
-- (an entry deleted by hand from queue:<name>, e.g. from Sidekiq's Web UI, or the
-- queue key deleted): without its token a group is never served again.  A group in
-- groups:<name> that is not parked and has no token in the queue gets one (at the
-- head: it has waited), or leaves the set if its list is empty.  O(queue length) per
-- group (LPOS): an operator's tool (Client.repair_groups), not the hot path.
--
-- KEYS[1]  queue:<name>     list
-- KEYS[2]  groups:<name>    set
-- KEYS[3]  gparked:<name>   zset
-- ARGV[1]  job name
-- ARGV[2]  the prefix of its group lists ("<prefix>gqueue:<name>:", keys.py's)
-- ARGV[3]  wake channel: PUBLISHed when a token makes the queue non-empty
--
-- Returns {repaired, dropped}.

local function token_of(name, g)  -- job.group_token's shape (fetch.lua, ack.lua)
  return '{"class":"forkq.group","queue":' .. cjson.encode(name) .. ',"args":[' .. cjson.encode(g)
    .. '],"jid":' .. cjson.encode('forkq-group-' .. g) .. ',"retry":false}'
end

local repaired, dropped = 0, 0
for _, g in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if not redis.call('ZSCORE', KEYS[3], g) then
    local token = token_of(ARGV[1], g)
    if not redis.call('LPOS', KEYS[1], token) then
      if redis.call('LLEN', ARGV[2] .. g) > 0 then
        if redis.call('RPUSH', KEYS[1], token) == 1 then
          redis.call('PUBLISH', ARGV[3], ARGV[1])
        end
        repaired = repaired + 1
      else
        redis.call('SREM', KEYS[2], g)
        dropped = dropped + 1
      end
    end
  end
end
return {repaired, dropped}
