-- Jobs queued by a version without tenant queues join their tenant's queue at their place, so a
-- worker of this version runs them. Returns how many joined.
-- KEYS: queue
-- ARGV: layout
-- USES: tenancy
local adopted = 0
local rows = redis.call('ZRANGE', KEY.queue, 0, -1, 'WITHSCORES')
for i = 1, #rows, 2 do
  local job = rows[i]
  local tenant = tenant_of(job)
  if not redis.call('ZSCORE', key('tenant_queue', tenant), job) then
    enqueue(tenant, job, tonumber(rows[i + 1]))
    adopted = adopted + 1
  end
end
return adopted
