-- Cancel a job in one step, whatever it is doing: a queued job is canceled, leaves the queues and
-- its inputs go; a running one is asked to stop (once: a repeated cancel adds no event); a
-- finished one is left alone. `finished_at` is JSON; `canceled_event` and `requested_event` the
-- status events' data; `totals` the final-status counters.
-- Returns {outcome, old status}: 'canceled', 'requested', 'unchanged', or {'missing', false}.
-- KEYS: job queue cancel events totals
-- ARGV: job finished_at canceled_event requested_event maxlen ttl layout
-- USES: emit tenancy
local current = redis.call('HGET', KEY.job, 'status')
if not current then return {'missing', false} end
local status = cjson.decode(current)
if status == 'queued' then
  redis.call('HSET', KEY.job, 'status', cjson.encode('canceled'), 'finished_at', ARG.finished_at)
  redis.call('ZREM', KEY.queue, ARG.job)
  dequeue(tenant_of(ARG.job), ARG.job)
  emit(KEY.events, 'status', ARG.canceled_event, ARG.maxlen, ARG.ttl)
  redis.call('HINCRBY', KEY.totals, 'canceled', 1)
  ended(ARG.job, 0, tonumber(ARG.ttl))
  return {'canceled', status}
end
if status == 'running' then
  if redis.call('HGET', KEY.job, 'cancel_requested') ~= 'true' then
    redis.call('SET', KEY.cancel, '1', 'EX', tonumber(ARG.ttl))
    redis.call('HSET', KEY.job, 'cancel_requested', 'true')
    emit(KEY.events, 'status', ARG.requested_event, ARG.maxlen, ARG.ttl)
  end
  return {'requested', status}
end
return {'unchanged', status}
