-- store_results: keep the state and JSON result/error of jobs whose name has a
-- result_ttl (forkq.results).  Sent by the fetcher in the same pipeline as the ack
-- that settles them (no round trip of its own); jobs without result_ttl never
-- appear here.  A job that ended (succeeded, dead, cancelled) also gets one element
-- pushed on its notify list, which Enqueuer.wait blocks on (BLPOP).
--
-- KEYS[2i-1]  result:<jid>          string: the record (JSON), set with EX ttl
-- KEYS[2i]    result-notify:<jid>   list: one element once the job ended
-- ARGV[3i-2]  the record (JSON, built by forkq.results)
-- ARGV[3i-1]  ttl in seconds
-- ARGV[3i]    "1" if the job ended (notify waiters), "0" otherwise (retrying: the
--             notify list is emptied)
--
-- Returns the number of records written.

local n = #KEYS / 2
for i = 1, n do
  local ttl = ARGV[3 * i - 1]
  redis.call('SET', KEYS[2 * i - 1], ARGV[3 * i - 2], 'EX', ttl)
  if ARGV[3 * i] == '1' then
    redis.call('DEL', KEYS[2 * i])
    redis.call('RPUSH', KEYS[2 * i], '1')
    redis.call('EXPIRE', KEYS[2 * i], ttl)
  else
    -- Not ended (retrying): an element left by an earlier end must not wake waiters.
    redis.call('DEL', KEYS[2 * i])
  end
end
return n
