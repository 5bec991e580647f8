-- A running job whose lease has gone: its worker died. Queue it again at its old place (in its
-- tenant's queue too), or fail it after `max_attempts`. `failed_fields` is a JSON object of JSON
-- values; `failed_event` and `requeued_event` the status events' data; `totals` the final-status
-- counters (jobs/telemetry.py). Returns 'alive', 'gone', 'requeued', 'failed'.
-- KEYS: job lease running queue events totals
-- ARGV: job max_attempts failed_fields failed_event requeued_event maxlen ttl layout
-- USES: emit tenancy
local current = redis.call('HGET', KEY.job, 'status')
if not current or cjson.decode(current) ~= 'running' then
  redis.call('SREM', KEY.running, ARG.job)
  return 'gone'
end
if redis.call('EXISTS', KEY.lease) == 1 then return 'alive' end
redis.call('SREM', KEY.running, ARG.job)
local attempts = tonumber(redis.call('HGET', KEY.job, 'attempts'))
if attempts >= tonumber(ARG.max_attempts) then
  for name, value in pairs(cjson.decode(ARG.failed_fields)) do redis.call('HSET', KEY.job, name, value) end
  emit(KEY.events, 'status', ARG.failed_event, ARG.maxlen, ARG.ttl)
  redis.call('HINCRBY', KEY.totals, 'failed', 1)
  ended(ARG.job, 0, tonumber(ARG.ttl))
  return 'failed'
end
redis.call('HSET', KEY.job, 'status', cjson.encode('queued'), 'run_token', 'null')
local sequence = tonumber(redis.call('HGET', KEY.job, 'sequence'))
redis.call('ZADD', KEY.queue, sequence, ARG.job)
enqueue(tenant_of(ARG.job), ARG.job, sequence)
emit(KEY.events, 'status', ARG.requeued_event, ARG.maxlen, ARG.ttl)
return 'requeued'
