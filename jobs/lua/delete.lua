-- Delete a job and all Redis keeps of it in one step, whatever it is doing (DELETE /jobs/{id}).
-- It leaves the queues (its tenant's too), the running set, the listings and its tenant's active
-- set, and gives back the bytes it held for its tenant. Its keys go: `keys` (a JSON list: the
-- ones its id names, keys.job_keys), its styles and its snapshots (the record lists both). A
-- running job's worker is told to stop by the cancel flag, kept `flag_seconds`: the run sees it
-- (or the job gone) within a second and writes nothing more. Returns 1, or 0 for no such job.
-- KEYS: job queue jobs running cancel
-- ARGV: job keys flag_seconds layout
-- USES: tenancy
local current = redis.call('HGET', KEY.job, 'status')
if not current then return 0 end
local tenant = tenant_of(ARG.job)  -- read before the hash goes

local gone = cjson.decode(ARG.keys)
local count = tonumber(redis.call('HGET', KEY.job, 'style_count') or '0')
for i = 0, count - 1 do gone[#gone + 1] = key('style', ARG.job, i) end
local snapshots = redis.call('HGET', KEY.job, 'snapshots')
if snapshots then
  for _, iteration in ipairs(cjson.decode(snapshots)) do gone[#gone + 1] = key('snapshot', ARG.job, iteration) end
end

redis.call('ZREM', KEY.queue, ARG.job)
dequeue(tenant, ARG.job)
redis.call('SREM', KEY.running, ARG.job)
redis.call('ZREM', KEY.jobs, ARG.job)
if tenant ~= layout.open then redis.call('ZREM', key('owner_jobs', tenant), ARG.job) end
redis.call('ZREM', key('active', tenant), ARG.job)
local held = redis.call('HGET', key('held_jobs', tenant), ARG.job)
if held then
  redis.call('DECRBY', key('held_total', tenant), tonumber(held))
  redis.call('HDEL', key('held_jobs', tenant), ARG.job)
  redis.call('ZREM', key('held_until', tenant), ARG.job)
end

for i = 1, #gone, 1000 do redis.call('DEL', unpack(gone, i, math.min(i + 999, #gone))) end
if cjson.decode(current) == 'running' then
  redis.call('SET', KEY.cancel, '1', 'EX', tonumber(ARG.flag_seconds))
end
return 1
