-- Renew a lease only for the run that holds the job. A lease that lapsed while Redis was away is
-- taken back if the job still runs under this token (before any reaper requeues it).
-- `token` is the run's token (JSON), `seconds` the lease's length.
-- KEYS: lease job
-- ARGV: token seconds
local held = redis.call('GET', KEY.lease)
if held == ARG.token or (not held and redis.call('HGET', KEY.job, 'run_token') == ARG.token
    and redis.call('HGET', KEY.job, 'status') == '"running"') then
  return redis.call('SET', KEY.lease, ARG.token, 'EX', tonumber(ARG.seconds))
end
return false
