"""Fair sharing of the workers between tenants (API keys; one tenant when the service has none).

A job waits in its tenant's own queue. A Celery message no longer names the job it runs: it is a
turn. A worker that gets a turn takes, in one Lua script, the oldest queued job of the tenant with
the fewest running jobs, the tenant served longest ago among equals (then the oldest job): so
one key's backlog of a thousand jobs delays another key's first job by at most the jobs already
running, one per worker. Every queued job has one message (its submission's, or its requeue's),
so there is always a turn for it; a turn that finds no queued job (its job was canceled, or
another turn took it) ends at once.

The order lives in Lua (jobs/lua/): tenancy.lua, the prelude every job script shares (a job's
tenant, its place in the queues, the bytes it holds: jobs/tenancy.py), computes the serving order;
next_job.lua takes from it (claim.lua's prelude) and position.lua counts what starts before a job.
Each takes the key layout, `keys.lua_layout()`, as its `layout` argument.
"""

from __future__ import annotations

from jobs import scripts

# How many jobs start before a queued one, in fair order: KEYS running (RUNNING_KEY), served
# (SERVED_KEY); ARGV job, layout. Replies that count (0: it starts next), or None if not queued.
QUEUE_POSITION = scripts.load("position")

# The next job in fair order and its batch key, without taking it: KEYS running, served; ARGV
# layout. Replies {id, batch key (JSON)}, or {False, False} when nothing is queued.
PEEK_NEXT = scripts.load("peek")
