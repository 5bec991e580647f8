"""The reference for bench/polling.py: a bare FastAPI route doing one async Redis HGETALL.

NST_REDIS_URL=redis://127.0.0.1:6379/0 uvicorn bench.bare_app:app
"""

from __future__ import annotations

import os
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI

app = FastAPI()
client = aioredis.Redis.from_url(os.environ.get("NST_REDIS_URL", "redis://127.0.0.1:6379/0"))


@app.get("/bare/{job_id}")
async def bare(job_id: str) -> dict[str, Any]:
    fields = await client.hgetall(f"nst:job:{job_id}")
    return {name.decode(): value.decode() for name, value in fields.items()}
