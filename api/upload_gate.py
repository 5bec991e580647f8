"""How many submissions one API process reads and checks at once (NST_MAX_CONCURRENT_UPLOADS).

Reading a 20 MB multipart body, decoding its images and storing them takes CPU the polls and
event streams of every other client need. A submission waits here for a slot before its body is
read, so a burst of uploads queues in the kernel's socket buffers instead of starving the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.requests import Request


def upload_gate(limit: int) -> asyncio.Semaphore:
    """The process's gate; `create_app` keeps it in app.state.upload_gate."""
    return asyncio.Semaphore(limit)


@asynccontextmanager
async def upload_slot(request: Request) -> AsyncIterator[None]:
    """Hold one of the process's upload slots for the body of the `async with`."""
    gate: asyncio.Semaphore = request.app.state.upload_gate
    async with gate:
        yield
