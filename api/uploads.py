"""Checking uploads before a job is queued: size, pixel count from the header, a full decode."""

from __future__ import annotations

import io
import json
import os
from typing import IO, Any

from PIL import Image
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from api.decode_budget import PixelBudget
from api.problems import file_problem, pydantic_errors, validation_problem
from core.decode import DECODE_ERRORS, check_decodes, decoded_pixels
from core.errors import InvalidImageError
from core.params import StyleParams
from jobs.settings import Settings


def upload_size(upload: UploadFile, field: str) -> int:
    """The file's size in bytes, read from its spooled file without reading it; api.multipart
    already refused any over NST_MAX_UPLOAD_BYTES."""
    upload.file.seek(0, os.SEEK_END)
    size = upload.file.tell()
    upload.file.seek(0)
    if not size:
        raise file_problem("not-an-image", field, "the file is empty")
    return size


def check_image(source: bytes | IO[bytes], field: str, settings: Settings, budget: PixelBudget) -> tuple[int, int]:
    """Decode the image (its bytes, or a file read from its start) as the worker will; its size is
    checked from the header first, so a decompression bomb is refused before any pixel is decoded,
    and the decode waits for its pixels in the process's budget. Returns (width, height) upright
    (EXIF orientation applied), the size the job's working size and memory are planned from."""
    if not isinstance(source, bytes):
        source.seek(0)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as header:
            width, height = header.size
            image_format = header.format
            progressive = bool(header.info.get("progressive") or header.info.get("progression"))
    except Image.DecompressionBombError as exc:  # past Pillow's own limit, far above ours
        message = f"more pixels than the {settings.max_input_pixels} allowed"
        raise file_problem("too-many-pixels", field, message) from exc
    except DECODE_ERRORS as exc:
        raise file_problem("not-an-image", field, "not an image this service can read") from exc
    if width * height > settings.max_input_pixels:
        message = f"{width}x{height} pixels is more than the {settings.max_input_pixels} allowed"
        raise file_problem("too-many-pixels", field, message)
    with budget.hold(decoded_pixels(width, height, image_format, progressive)):
        try:
            return check_decodes(source)  # after EXIF rotation, as the worker sees it
        except InvalidImageError as exc:
            raise file_problem("not-an-image", field, "the image cannot be decoded") from exc


def parse_params(raw: str | None, style_count: int, settings: Settings) -> StyleParams:
    """The `params` form field: a JSON object of StyleParams names, checked against the limits."""
    given: Any = {}
    if raw is not None and raw.strip():
        try:
            given = json.loads(raw)
        except ValueError as exc:
            raise validation_problem([{"field": "params", "message": f"not valid JSON: {exc}"}]) from exc
        except RecursionError as exc:  # `[[[[...` a thousand deep: the client's mistake, not ours
            raise validation_problem([{"field": "params", "message": "nested too deeply"}]) from exc
    if not isinstance(given, dict):
        raise validation_problem([{"field": "params", "message": "must be a JSON object"}])
    try:
        params = StyleParams.model_validate(given)
    except ValidationError as exc:
        raise validation_problem(pydantic_errors(list(exc.errors()), ("params",))) from exc
    errors = []
    if params.iterations > settings.max_iterations:
        errors.append({"field": "params.iterations", "message": f"at most {settings.max_iterations} on this service"})
    for side in ("height", "width"):
        if getattr(params, side) > settings.max_side:
            errors.append({"field": f"params.{side}", "message": f"at most {settings.max_side} on this service"})
    try:
        params.blend_weights(style_count)
    except ValueError as exc:
        errors.append({"field": "params.style_blend_weights", "message": str(exc)})
    if errors:
        raise validation_problem(errors)
    return params
