-- How many jobs start before a queued one, in serving order: its tenant's jobs ahead of it, and of
-- every other tenant as many as the rounds before its turn allow. Returns that count (0: it starts
-- next), or false if the job is not queued.
-- KEYS: running served
-- ARGV: job layout
-- USES: tenancy
local tenant = tenant_of(ARG.job)
local rank = redis.call('ZRANK', key('tenant_queue', tenant), ARG.job)
if not rank then return false end
local ahead = rank
local before = true
for _, entry in ipairs(serving_order(KEY.running, KEY.served)) do
  if entry.tenant == tenant then
    before = false
  else
    local size = redis.call('ZCARD', key('tenant_queue', entry.tenant))
    ahead = ahead + math.min(size, before and rank + 1 or rank)
  end
end
return ahead
