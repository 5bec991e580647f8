"""Hooks for the schemathesis run of tests/api/test_schemathesis.py (loaded by SCHEMATHESIS_HOOKS).

A fuzzer cannot make up a picture: every `POST /jobs` it generates would be a 415 and no job would
ever reach the operations its links lead to. Here the uploads of a generated submission are real
(tiny) images; every other part of it stays as generated, so the parameters are fuzzed.
"""

from __future__ import annotations

import io
from typing import Any

import schemathesis
from PIL import Image


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 20), colour).save(buffer, "PNG")
    return buffer.getvalue()


CONTENT = _png((200, 120, 40))
STYLE = _png((30, 60, 180))


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    operation = context.operation
    if operation is None or operation.method.upper() != "POST" or operation.path != "/jobs":
        return body
    if not isinstance(body, dict):
        return body
    styles = body.get("style")
    count = len(styles) if isinstance(styles, list) and styles else 1
    return {**body, "content": CONTENT, "style": [STYLE] * count}
