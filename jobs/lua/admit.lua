-- Admission of one submission against its tenant's limits (jobs/tenancy.py). `job` (absent when
-- only looking) is the job id; `active_limit` 0 is none; `bytes` what the job would hold;
-- `job_ttl` how long its bytes count at most; `ttl` that of the tenant's keys; `job_template` the
-- job hash's key template; `take` 1 takes, 0 only looks; `reserved_seconds` how long a place
-- without its job still counts. Returns {'ok'}, or the limit that refuses with the tenant's
-- figure: {'active', count}, {'submissions', count}, {'bytes', held}. Taking twice for one job
-- (a reply lost, the call made again) takes once.
-- KEYS: active submissions held_total held_jobs held_until
-- ARGV: job? active_limit submission_limit bytes bytes_limit job_ttl ttl job_template take reserved_seconds
local job = ARG.job
local active_limit, submission_limit = tonumber(ARG.active_limit), tonumber(ARG.submission_limit)
local bytes, bytes_limit = tonumber(ARG.bytes), tonumber(ARG.bytes_limit)
local job_ttl, ttl, take = tonumber(ARG.job_ttl), tonumber(ARG.ttl), ARG.take == '1'
local final = {['"succeeded"'] = true, ['"failed"'] = true, ['"canceled"'] = true}
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
if take and redis.call('HEXISTS', KEY.held_jobs, job) == 1 then return {'ok'} end

local members = redis.call('ZRANGE', KEY.active, 0, -1, 'WITHSCORES')
local active = 0
for i = 1, #members, 2 do
  local status = redis.call('HGET', string.format(ARG.job_template, members[i]), 'status')
  if (not status and tonumber(members[i + 1]) < now - tonumber(ARG.reserved_seconds)) or (status and final[status]) then
    redis.call('ZREM', KEY.active, members[i])
  else
    active = active + 1
  end
end
if active_limit > 0 and active >= active_limit then return {'active', active} end

local submitted = tonumber(redis.call('GET', KEY.submissions) or '0')
if submitted >= submission_limit then return {'submissions', submitted} end

local expired = redis.call('ZRANGEBYSCORE', KEY.held_until, '-inf', now)
for _, id in ipairs(expired) do
  redis.call('DECRBY', KEY.held_total, tonumber(redis.call('HGET', KEY.held_jobs, id) or '0'))
  redis.call('HDEL', KEY.held_jobs, id)
  redis.call('ZREM', KEY.held_until, id)
end
local held = tonumber(redis.call('GET', KEY.held_total) or '0')
if held + bytes > bytes_limit or held >= bytes_limit then return {'bytes', held} end

if take then
  redis.call('ZADD', KEY.active, now, job)
  redis.call('INCR', KEY.submissions)
  redis.call('EXPIRE', KEY.submissions, 2 * 60)
  redis.call('HSET', KEY.held_jobs, job, bytes)
  redis.call('INCRBY', KEY.held_total, bytes)
  redis.call('ZADD', KEY.held_until, math.floor(now) + job_ttl, job)
end
for _, name in ipairs({'active', 'held_total', 'held_jobs', 'held_until'}) do  -- the minute's counter keeps its own
  redis.call('EXPIRE', KEY[name], ttl)
end
return {'ok'}
