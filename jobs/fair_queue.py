"""Fair sharing of the workers between tenants (API keys; one tenant when the service has none).

A job waits in its tenant's own queue. A Celery message no longer names the job it runs: it is a
turn. A worker that gets a turn takes, in one Lua script, the oldest queued job of the tenant with
the fewest running jobs, the tenant served longest ago among equals (then the oldest job): so
one key's backlog of a thousand jobs delays another key's first job by at most the jobs already
running, one per worker. Every queued job has one message (its submission's, or its requeue's),
so there is always a turn for it; a turn that finds no queued job (its job was canceled, or
another turn took it) ends at once.

The scripts share TENANCY_LUA: a job's tenant, its place in the queues, and the bytes it holds
(jobs/tenancy.py). Their last argument is always `keys.lua_layout()`.
"""

from __future__ import annotations

TENANCY_LUA = """
local layout = cjson.decode(ARGV[#ARGV])
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
    if type(decoded) == 'string' then return decoded end
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
"""

# The next job in fair order, without taking it. KEYS: running set, served hash. Returns the job
# id, or false when nothing is queued. Ids left behind by expired jobs (or by a worker of an
# earlier version, which takes a job out of the global queue only) leave the queues on the way:
# each round removes one, so the loop ends.
NEXT_JOB_LUA = """
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
"""

# How many jobs start before a queued one, in serving order: its tenant's jobs ahead of it, and of
# every other tenant as many as the rounds before its turn allow. KEYS: running set, served hash.
# ARGV: job id, layout. Returns that count (0: it starts next), or false if it is not queued.
POSITION = (
    TENANCY_LUA
    + """
local job = ARGV[1]
local tenant = tenant_of(job)
local rank = redis.call('ZRANK', key('tenant_queue', tenant), job)
if not rank then return false end
local ahead = rank
local before = true
for _, entry in ipairs(serving_order(KEYS[1], KEYS[2])) do
  if entry.tenant == tenant then
    before = false
  else
    local size = redis.call('ZCARD', key('tenant_queue', entry.tenant))
    ahead = ahead + math.min(size, before and rank + 1 or rank)
  end
end
return ahead
"""
)
