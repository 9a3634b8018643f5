"""Structured logs: JSON lines in production, readable lines on a terminal.

Request ids and tenant ids are bound through contextvars so every line of a request
carries them. Tracebacks are rendered without local variables, which may hold secrets.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

# structlog's dict_tracebacks shows each frame's local variables, which hold passwords,
# tokens and form fields; this renderer keeps the frames and drops the locals.
_tracebacks_without_locals = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)


def configure_logging(
    *, json: bool | None = None, level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _tracebacks_without_locals if json else structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        # Not cached, so that reconfiguring (as tests do) reaches module-level loggers.
        cache_logger_on_first_use=False,
    )
