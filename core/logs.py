"""Logging for every `nst` process: one record per event, a traceback whole inside its record,
and with NST_LOG_FORMAT=json one JSON object per line carrying the job id where there is one."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

# The job this thread or task works on; every record made meanwhile carries it.
current_job_id: ContextVar[str | None] = ContextVar("nst_job_id", default=None)

# The messages about a job name it already ("job 3f2a…: started"); JSON records carry job_id too.
TEXT_FORMAT = "nst: %(levelname)s: %(message)s"
FORMATS = ("text", "json")


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Records logged inside carry `job_id`."""
    token = current_job_id.set(job_id)
    try:
        yield
    finally:
        current_job_id.reset(token)


class JobIdFilter(logging.Filter):
    """Puts the current job id on each record (`job_id`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = getattr(record, "job_id", None) or current_job_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One line of JSON per record; the traceback, whole, in `exception`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        job_id = getattr(record, "job_id", None)
        if job_id:
            entry["job_id"] = job_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def log_format() -> str:
    chosen = os.environ.get("NST_LOG_FORMAT", "text").strip().lower() or "text"
    if chosen not in FORMATS:
        raise ValueError(f"NST_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {chosen!r}")
    return chosen


def make_formatter() -> logging.Formatter:
    """The formatter NST_LOG_FORMAT asks for (also named by uvicorn's dictConfig, in its processes)."""
    return JsonFormatter() if log_format() == "json" else logging.Formatter(TEXT_FORMAT)


class NstHandler(logging.StreamHandler[TextIO]):
    """The handler configure_logging installs (told apart from a host's, such as pytest's)."""


def make_handler(stream: TextIO | None = None) -> logging.Handler:
    handler = NstHandler(stream or sys.stderr)
    handler.setFormatter(make_formatter())
    handler.addFilter(JobIdFilter())
    return handler


def configure_logging(level: int | str = logging.WARNING, stream: TextIO | None = None) -> None:
    """One handler on the root logger; uncaught exceptions, in any thread, logged as one record.
    Like logging.basicConfig, it leaves alone a root logger that its host configured."""
    root = logging.getLogger()
    if any(not isinstance(handler, NstHandler) for handler in root.handlers):
        return
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(make_handler(stream))
    root.setLevel(level)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], value: BaseException, traceback: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, traceback)
        return
    logging.getLogger("nst").critical("uncaught exception", exc_info=(kind, value, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread else "a thread"
    # ExceptHookArgs allows a missing value; a thread's uncaught exception always has one.
    value = args.exc_value
    exc_info = (args.exc_type, value, args.exc_traceback) if value is not None else None
    logging.getLogger("nst").error("uncaught exception in %s", name, exc_info=exc_info)
