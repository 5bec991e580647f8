"""A sweep's contact sheet: one tile per cell, each the job's picture scaled to fit TILE px with a
strip of labels under it (the cell's values, and the job's status until it has succeeded).

Two axes: rows are the first axis's values, columns the second's. One axis: its values along a
row, wrapped every MAX_COLUMNS tiles. A cell without a picture yet is a grey placeholder."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from api.decode_budget import PixelBudget
from jobs.sweeps import STYLE_AXIS, SweepAxis

TILE = 256  # a tile's picture fits a TILE x TILE box
GAP = 8  # between tiles and around the sheet
LINE = 16  # one label line
MAX_COLUMNS = 6  # a one-axis sweep wraps its row here
BACKGROUND = (255, 255, 255)
PLACEHOLDER = (150, 150, 150)
TILE_BACKGROUND = (32, 32, 32)
TEXT = (20, 20, 20)
QUALITY = 85

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True)
class Tile:
    values: dict[str, Any]
    status: str
    fraction: float = 0.0  # progress of a running job
    picture: Image.Image | None = None  # already scaled to fit TILE x TILE


def grid_shape(axes: list[SweepAxis]) -> tuple[int, int]:
    """(rows, columns) of the sheet."""
    if len(axes) >= 2:
        return len(axes[0].values), len(axes[1].values)
    count = len(axes[0].values)
    columns = min(count, MAX_COLUMNS)
    return -(-count // columns), columns


def label_lines(axes: list[SweepAxis]) -> int:
    """One line per axis and one for the status."""
    return len(axes) + 1


def sheet_size(axes: list[SweepAxis]) -> tuple[int, int]:
    """(width, height) of the sheet of a sweep with these axes."""
    rows, columns = grid_shape(axes)
    cell_height = TILE + LINE * label_lines(axes) + 4
    return GAP + columns * (TILE + GAP), GAP + rows * (cell_height + GAP)


@lru_cache(maxsize=1)
def font() -> Font:
    try:
        return ImageFont.load_default(size=12)  # Pillow's own font, when it has FreeType
    except (ImportError, OSError):  # pragma: no cover - a Pillow built without FreeType
        return ImageFont.load_default()


def value_text(axis: SweepAxis, value: Any) -> str:
    if axis.name == STYLE_AXIS and axis.labels is not None and isinstance(value, int) and value < len(axis.labels):
        return f"style {value}: {axis.labels[value]}"
    if isinstance(value, float):
        return f"{axis.name}={value:g}"
    shown = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return f"{axis.name}={shown}"


def fit(text: str, draw: ImageDraw.ImageDraw, width: int) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=font()) <= width:
        return text
    while text and draw.textlength(text + "…", font=font()) > width:
        text = text[:-1]
    return text + "…"


def status_text(tile: Tile) -> str:
    if tile.status == "running":
        return f"running {round(100 * tile.fraction)}%"
    return "" if tile.status == "succeeded" else tile.status


def thumbnail(data: bytes, budget: PixelBudget | None = None) -> Image.Image | None:
    """An image's bytes decoded (holding its pixels in the process's decode `budget`, as uploads
    do) and scaled to fit TILE x TILE, up or down; None if they do not decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (TILE, TILE))  # a JPEG (snapshot) decodes at a fraction of its size
            with budget.hold(image.width * image.height) if budget else contextlib.nullcontext():
                picture = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    scale = min(TILE / picture.width, TILE / picture.height)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)  # up too: a small result fills its tile


def render_sheet(axes: list[SweepAxis], tiles: list[Tile]) -> bytes:
    """The sheet as JPEG: `tiles` in row-major order, one per cell."""
    rows, columns = grid_shape(axes)
    width, height = sheet_size(axes)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    cell_height = TILE + LINE * label_lines(axes) + 4
    for index, tile in enumerate(tiles[: rows * columns]):
        row, column = divmod(index, columns)
        left, top = GAP + column * (TILE + GAP), GAP + row * (cell_height + GAP)
        if tile.picture is None:
            draw.rectangle((left, top, left + TILE - 1, top + TILE - 1), fill=PLACEHOLDER)
            word = status_text(tile) or tile.status
            length = draw.textlength(word, font=font())
            draw.text((left + (TILE - length) / 2, top + TILE / 2 - LINE / 2), word, fill=TEXT, font=font())
        else:
            draw.rectangle((left, top, left + TILE - 1, top + TILE - 1), fill=TILE_BACKGROUND)
            picture = tile.picture
            sheet.paste(picture, (left + (TILE - picture.width) // 2, top + (TILE - picture.height) // 2))
        lines = [value_text(axis, tile.values.get(axis.name)) for axis in axes] + [status_text(tile)]
        for number, line in enumerate(lines):
            draw.text((left, top + TILE + 2 + number * LINE), fit(line, draw, TILE), fill=TEXT, font=font())
    out = io.BytesIO()
    sheet.save(out, "JPEG", quality=QUALITY)
    return out.getvalue()
