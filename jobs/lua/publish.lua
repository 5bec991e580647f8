-- A progress write, only by the run that holds the job: a run that lost it (its lease lapsed and
-- the job was requeued or failed) writes nothing after the job's end. `token` is the run's token
-- (JSON); `fields` a JSON object of JSON values; `progress` the progress event's data; `history`
-- a line of loss history; `image` a snapshot's bytes, stored at KEY.snapshot (they count for the
-- job's tenant) and counted in KEY.snapshots; `snapshot_event` that snapshot's event data.
-- Returns 1 when written, 0 when the run no longer holds the job.
-- KEYS: job events losses snapshot snapshots
-- ARGV: token fields progress history? image? snapshot_event? maxlen ttl job layout
-- USES: emit tenancy
if redis.call('HGET', KEY.job, 'run_token') ~= ARG.token or redis.call('HGET', KEY.job, 'status') ~= '"running"' then
  return 0
end
if ARG.image then
  local before = redis.call('STRLEN', KEY.snapshot)  -- a resumed run writes an iteration's snapshot again
  redis.call('SET', KEY.snapshot, ARG.image, 'EX', tonumber(ARG.ttl))
  redis.call('INCR', KEY.snapshots)
  settle(ARG.job, tenant_of(ARG.job), #ARG.image - before, nil)
end
for name, value in pairs(cjson.decode(ARG.fields)) do redis.call('HSET', KEY.job, name, value) end
if ARG.history then
  redis.call('APPEND', KEY.losses, ARG.history)
  redis.call('EXPIRE', KEY.losses, tonumber(ARG.ttl))
end
emit(KEY.events, 'progress', ARG.progress, ARG.maxlen, ARG.ttl)
if ARG.snapshot_event then emit(KEY.events, 'snapshot', ARG.snapshot_event, ARG.maxlen, ARG.ttl) end
return 1
