"""uvicorn's log configuration: its records through the service's one handler and format (core.logs)."""

from __future__ import annotations

from typing import Any


def uvicorn_log_config(level: str = "info") -> dict[str, Any]:
    """uvicorn's loggers through the same handler (dictConfig runs again in each of its processes)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"nst": {"()": "core.logs.make_formatter"}},
        "filters": {"job": {"()": "core.logs.JobIdFilter"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "nst",
                "filters": ["job"],
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"handlers": ["default"], "level": level.upper(), "propagate": False},
        },
        "root": {"handlers": ["default"], "level": "INFO"},
    }
