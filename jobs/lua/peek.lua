-- The next job in fair order (jobs/fair_queue.py) and its batch key, without taking it: a
-- batching worker asks whether that job may join its batch (core.batching). Returns
-- {job id, batch_key (JSON: a string, or null)}, or {false, false} when nothing is queued.
-- KEYS: running served
-- ARGV: layout
-- USES: tenancy next_job
local job = next_job(KEY.running, KEY.served)
if not job then return {false, false} end
return {job, redis.call('HGET', key('job', job), 'batch_key') or 'null'}
