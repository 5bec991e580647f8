-- Take a job out of the queues (the broker refused it).
-- KEYS: queue
-- ARGV: job layout
-- USES: tenancy
redis.call('ZREM', KEY.queue, ARG.job)
dequeue(tenant_of(ARG.job), ARG.job)
