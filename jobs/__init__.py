"""The job contract: what the API (api/) and the worker (worker/) share, and neither owns.

    settings.py   NST_* settings of both halves
    keys.py       the Redis key layout: the only module that names a key
    record.py     the job record and the one decoder of its hash
    store.py      writes of job state through the Lua scripts in lua/ (sync: the worker, submit, cancel)
    scripts.py    those scripts, loaded from lua/ and called with named arguments
    reader.py     the API's async reads of jobs, images and event streams
    view.py       the one public shape of a job: JSON answers, events, webhooks and OpenAPI
    problems.py   the catalogue of problem types and the one builder of a problem
    workers.py    the liveness rule: heartbeats, readiness, the live set
    queue.py      the Celery app and the names a job's turn is sent with
    tenancy.py    per-key limits; fair_queue.py: the order jobs start in
    telemetry.py  service-wide counters kept in Redis
    webhooks.py   the webhook announcement; url_safety.py: which URLs it may call

It imports neither FastAPI nor torch (tests/test_architecture.py checks).
"""
