"""A one-line progress bar for the command line: iteration, losses, it/s, ETA."""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from core.transfer import Progress

WIDTH = 24


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def format_line(
    iteration: int,
    total: int,
    losses: tuple[float, float, float] | None,
    iterations_per_second: float | None,
    eta_seconds: float | None,
) -> str:
    filled = WIDTH * iteration // max(total, 1)
    text = f"[{'#' * filled}{'.' * (WIDTH - filled)}] {iteration}/{total}"
    if losses is not None:
        text += f" loss {losses[0]:.4g} (content {losses[1]:.4g}, style {losses[2]:.4g})"
    if iterations_per_second:
        text += f" {iterations_per_second:.2f} it/s"
    return text + f" ETA {format_duration(eta_seconds)}"


class ProgressBar:
    """Redraws one line on a terminal; writes a line per snapshot elsewhere (logs, pipes)."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.total = total
        self.interactive = bool(getattr(stream, "isatty", lambda: False)())
        self._drawn = False

    def update(self, progress: Progress) -> None:
        losses = progress.losses
        line = format_line(
            progress.iteration, progress.total, (losses.total, losses.content, losses.style),
            progress.iterations_per_second, progress.eta_seconds,
        )  # fmt: skip
        self.show(line, progress.is_snapshot)

    def show(self, line: str, milestone: bool) -> None:
        """Redraw `line` on a terminal; elsewhere write it only at milestones (snapshots)."""
        if self.interactive:
            self.stream.write("\r\x1b[2K" + line)
            self._drawn = True
        elif milestone:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
