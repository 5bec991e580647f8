"""Celery inside our logging: both Celery workers (jobs, webhooks) call `keep_our_logging` first."""

from __future__ import annotations

import contextlib
import logging


def keep_our_logging() -> None:
    """Celery leaves logging as core/logs.py set it up, and prints nothing outside a record."""
    from celery.signals import setup_logging

    from core.logs import log_format

    # Any receiver here makes Celery leave logging alone and stop redirecting stdout and stderr
    # to a logger, which split a traceback into a record per write.
    setup_logging.connect(lambda **_: None, weak=False)
    if log_format() == "json":
        import celery.apps.worker

        # Celery writes "worker: Warm shutdown" straight to the file descriptor: as a record instead.
        celery.apps.worker.safe_say = say_as_record


def say_as_record(message: str, stream: object = None) -> None:
    """A line Celery would print, as one JSON record written with os.write (it runs in signal
    handlers, where taking the logging lock of another thread could wait forever)."""
    import os

    from core.logs import make_formatter

    record = logging.LogRecord("celery.apps.worker", logging.WARNING, __file__, 0, message.strip(), None, None)
    with contextlib.suppress(OSError):
        os.write(2, (make_formatter().format(record) + "\n").encode())
