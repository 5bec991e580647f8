"""A one-line progress bar for the command line: iteration, losses, it/s, ETA."""

from __future__ import annotations

from typing import TextIO

from core.transfer import Progress

WIDTH = 24


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class ProgressBar:
    """Redraws one line on a terminal; writes a line per snapshot elsewhere (logs, pipes)."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.total = total
        self.interactive = bool(getattr(stream, "isatty", lambda: False)())
        self._drawn = False

    def line(self, progress: Progress) -> str:
        filled = WIDTH * progress.iteration // max(progress.total, 1)
        losses = progress.losses
        return (
            f"[{'#' * filled}{'.' * (WIDTH - filled)}] {progress.iteration}/{progress.total} "
            f"loss {losses.total:.4g} (content {losses.content:.4g}, style {losses.style:.4g}) "
            f"{progress.iterations_per_second:.2f} it/s ETA {format_duration(progress.eta_seconds)}"
        )

    def update(self, progress: Progress) -> None:
        if self.interactive:
            self.stream.write("\r\x1b[2K" + self.line(progress))
            self._drawn = True
        elif progress.is_snapshot:
            self.stream.write(self.line(progress) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
