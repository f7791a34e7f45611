"""structlog set-up: one JSON or console line per event, with context bound per task."""

import logging
import sys

import structlog


def configure_logging(level: str = "INFO", json: bool = False) -> None:
    """Routes structlog to stderr at ``level``; libraries' stdlib logs go to stderr too, and
    chatty HTTP clients only say something when it matters."""
    logging.basicConfig(
        level=level, stream=sys.stderr, force=True, format="%(levelname)s %(name)s %(message)s"
    )
    for noisy in ("httpx2", "httpx", "uvicorn.access", "slack_bolt", "slack_sdk"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
