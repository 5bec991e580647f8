-- Claim a queued job for one run: the job `job` names or, absent, the next one in fair order
-- (jobs/fair_queue.py). `fields` is a JSON object of JSON values, run_token among them
-- (`attempts` counts up by itself unless given); `token` the run's token (JSON); `lease` seconds;
-- `now` (JSON) the start time of a first start.
-- Returns {job id, attempts, created_at (JSON), 1} when claimed (0 last: this run's claim had
-- been made already, its reply lost); {false, status} when the named job is not queued;
-- {false, false} when there is no such job, or nothing is queued.
-- KEYS: queue running served serve_counter
-- ARGV: job? fields token lease now maxlen ttl layout
-- USES: emit tenancy next_job
local claim = key('claim', cjson.decode(ARG.token))
local made = redis.call('GET', claim)
if made and (not ARG.job or ARG.job == made) then
  local hash = key('job', made)
  return {made, tonumber(redis.call('HGET', hash, 'attempts')), redis.call('HGET', hash, 'created_at'), 0}
end
local job = ARG.job
if not job then
  job = next_job(KEY.running, KEY.served)
  if not job then return {false, false} end
end
local hash = key('job', job)
local current = redis.call('HGET', hash, 'status')
if not current then return {false, false} end
if current ~= '"queued"' then return {false, cjson.decode(current)} end
local fields = cjson.decode(ARG.fields)
local attempts = tonumber(fields.attempts or (tonumber(redis.call('HGET', hash, 'attempts') or '0') + 1))
for name, value in pairs(fields) do redis.call('HSET', hash, name, value) end
redis.call('HSET', hash, 'attempts', attempts)
if redis.call('HGET', hash, 'started_at') == 'null' then redis.call('HSET', hash, 'started_at', ARG.now) end
redis.call('SET', key('lease', job), ARG.token, 'EX', tonumber(ARG.lease))
redis.call('SET', claim, job, 'EX', tonumber(ARG.lease) * 10)
redis.call('SADD', KEY.running, job)
redis.call('ZREM', KEY.queue, job)
local tenant = tenant_of(job)
dequeue(tenant, job)
redis.call('HSET', KEY.served, tenant, redis.call('INCR', KEY.serve_counter))
emit(key('events', job), 'status', cjson.encode({status = 'running', attempt = attempts}), ARG.maxlen, ARG.ttl)
return {job, attempts, redis.call('HGET', hash, 'created_at'), 1}
