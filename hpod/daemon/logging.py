"""structlog, configured once at the entry point: a console renderer on a TTY, JSON lines otherwise.

Libraries and tests never call :func:`configure`; they only call :func:`get_logger`, so an
in-process test keeps structlog's defaults (and `structlog.testing.capture_logs` works there).
The stdlib root logger is routed through the same renderer, so a warning from asyncio or a
library reads like the daemon's own lines.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO, cast

import structlog
from structlog.typing import FilteringBoundLogger, Processor

from hpod.errors import HpodError

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
FORMATS = ("auto", "console", "json")


class _HpodHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the root handler we installed, so a second configure() replaces it."""


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or stream-like object without a tty notion
        return False


def configure(*, level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger; calling it again reconfigures both."""
    level_no = LEVELS.get(level.lower())
    if level_no is None:
        raise HpodError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise HpodError(f"unknown log format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = sys.stderr if stream is None else stream
    console = fmt == "console" or (fmt == "auto" and _isatty(out))

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    # Tracebacks without local variables: a frame's locals can hold a trial's token.
    if console:
        renderer = structlog.dev.ConsoleRenderer(
            colors=_isatty(out), exception_formatter=structlog.dev.plain_traceback
        )
        tail: list[Processor] = [structlog.processors.StackInfoRenderer()]
    else:
        renderer = structlog.processors.JSONRenderer()
        tail = [
            structlog.processors.StackInfoRenderer(),
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
        ]

    structlog.reset_defaults()
    structlog.configure(
        processors=[*shared, *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        context_class=dict,
        cache_logger_on_first_use=True,
    )

    handler = _HpodHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tail,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _HpodHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_no)


def get_logger(name: str, **context: Any) -> FilteringBoundLogger:
    """A logger that names its component (`logger=hpod.daemon.runner`) and carries `context`."""
    return cast(FilteringBoundLogger, structlog.get_logger().bind(logger=name, **context))
