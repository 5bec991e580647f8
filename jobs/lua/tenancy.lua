-- Prelude: a job's tenant, its place in the queues, and the bytes it holds (jobs/tenancy.py).
-- ARG.layout is keys.lua_layout(): the key templates of jobs and tenants a script learns of only
-- as it runs.
-- ARGV: layout
local layout = cjson.decode(ARG.layout)
local function key(name, ...) return string.format(layout[name], ...) end

-- Redis's own clock: the same for every host that runs these scripts.
local function now()
  local time = redis.call('TIME')
  return tonumber(time[1])
end

local function tenant_of(job)
  local owner = redis.call('HGET', key('job', job), 'owner')
  if owner then
    local decoded = cjson.decode(owner)
    if type(decoded) == 'string' then return decoded end  -- a JSON null owner (cjson.null) is truthy
  end
  return layout.open
end

local function enqueue(tenant, job, sequence)
  redis.call('ZADD', key('tenant_queue', tenant), sequence, job)
  redis.call('ZADD', layout.tenants, 'LT', sequence, tenant)
end

local function dequeue(tenant, job)
  local queue = key('tenant_queue', tenant)
  redis.call('ZREM', queue, job)
  local head = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
  if #head == 0 then
    redis.call('ZREM', layout.tenants, tenant)
  else
    redis.call('ZADD', layout.tenants, head[2], tenant)
  end
end

-- Add `delta` bytes to what the job holds for its tenant (and move when they expire, given
-- `expires`); nothing for a job the ledger has forgotten (expired, or admitted by an older version).
local function settle(job, tenant, delta, expires)
  local jobs = key('held_jobs', tenant)
  if redis.call('HEXISTS', jobs, job) == 0 then return end
  redis.call('HINCRBY', jobs, job, delta)
  redis.call('INCRBY', key('held_total', tenant), delta)
  if expires then
    redis.call('ZADD', key('held_until', tenant), expires, job)
    for _, name in ipairs({'held_jobs', 'held_total', 'held_until'}) do  -- kept while the entry is
      redis.call('EXPIREAT', key(name, tenant), expires + 3600)
    end
  end
end

-- A job has reached a final status: no run can need its inputs, checkpoint or lease any more.
-- They go now; what it holds from here is its snapshots and `result` bytes, for `ttl` seconds
-- (its keys' new expiry).
local function ended(job, result, ttl)
  local hash = key('job', job)
  local count = tonumber(redis.call('HGET', hash, 'style_count') or '0')
  local gone = {key('content', job), key('checkpoint', job), key('lease', job)}
  for i = 0, count - 1 do gone[#gone + 1] = key('style', job, i) end
  redis.call('DEL', unpack(gone))
  local dropped = tonumber(redis.call('HGET', hash, 'input_bytes') or '0')
  redis.call('HSET', hash, 'input_bytes', '0')
  settle(job, tenant_of(job), result - dropped, now() + ttl)
end

local function running_by_tenant(running_set)
  local counts = {}
  for _, id in ipairs(redis.call('SMEMBERS', running_set)) do
    local tenant = tenant_of(id)
    counts[tenant] = (counts[tenant] or 0) + 1
  end
  return counts
end

-- The tenants with queued jobs in the order they are served: fewest running jobs first, then
-- the one served longest ago, then the one with the oldest job. Each entry: {tenant, queue size}.
local function serving_order(running_set, served)
  local running = running_by_tenant(running_set)
  local rows = redis.call('ZRANGE', layout.tenants, 0, -1, 'WITHSCORES')
  local order = {}
  for i = 1, #rows, 2 do
    local tenant = rows[i]
    order[#order + 1] = {
      tenant = tenant, running = running[tenant] or 0, head = tonumber(rows[i + 1]),
      served = tonumber(redis.call('HGET', served, tenant) or '0'),
    }
  end
  table.sort(order, function(a, b)
    if a.running ~= b.running then return a.running < b.running end
    if a.served ~= b.served then return a.served < b.served end
    return a.head < b.head
  end)
  return order
end
