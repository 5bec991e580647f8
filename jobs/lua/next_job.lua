-- Prelude: the next job in fair order (jobs/fair_queue.py), without taking it; false when nothing
-- is queued. Ids left behind by expired jobs (or by a worker of an earlier version, which takes a
-- job out of the global queue only) leave the queues on the way: each round removes one, so the
-- loop ends.
-- USES: tenancy
local function next_job(running_set, served)
  while true do
    local order = serving_order(running_set, served)
    if #order == 0 then return false end
    local tenant = order[1].tenant
    local queue = key('tenant_queue', tenant)
    local first = redis.call('ZRANGE', queue, 0, 0)
    if #first == 0 then
      redis.call('ZREM', layout.tenants, tenant)
    elseif redis.call('HGET', key('job', first[1]), 'status') ~= '"queued"' then
      dequeue(tenant, first[1])
      redis.call('ZREM', layout.queue, first[1])
    else
      return first[1]
    end
  end
end
