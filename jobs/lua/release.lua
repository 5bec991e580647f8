-- Give back what admit.lua took for a job that was not queued after all.
-- KEYS: active submissions held_total held_jobs held_until
-- ARGV: job
redis.call('ZREM', KEY.active, ARG.job)
if tonumber(redis.call('GET', KEY.submissions) or '0') > 0 then redis.call('DECR', KEY.submissions) end
local bytes = redis.call('HGET', KEY.held_jobs, ARG.job)
if bytes then
  redis.call('DECRBY', KEY.held_total, tonumber(bytes))
  redis.call('HDEL', KEY.held_jobs, ARG.job)
  redis.call('ZREM', KEY.held_until, ARG.job)
end
