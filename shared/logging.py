"""structlog configured once: JSON lines to stdout, ISO UTC timestamps, context vars first.

No API key reaches a log line: every event (structlog's, and the standard library's records of
aiohttp and asyncio) passes `redact`, which blanks `Authorization` values, bearer tokens and anything
shaped like one of our keys (`osk_…`), in messages, fields and tracebacks alike.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"
# An Authorization header's value (to the end of its line or quote), a bearer token, an osk_ key.
_SECRETS = re.compile(
    r"(?i)(?P<header>authorization\s*[:=]\s*)(?P<hvalue>[^\r\n'\"\\]*)"
    r"|(?P<bearer>bearer\s+)(?P<bvalue>[^\s'\"\\]+)"
    r"|osk_[A-Za-z0-9_\-]*"
)
_SECRET_FIELDS = frozenset({"authorization", "api_key", "bootstrap_admin_key"})
STDLIB_LOGGERS = ("aiohttp", "aiohttp.server", "aiohttp.access", "aiohttp.web", "aiohttp.internal",
                  "aiohttp.client", "asyncio")


def _blank(match: re.Match[str]) -> str:
    if match.group("header") is not None:
        return match.group("header") + REDACTED
    if match.group("bearer") is not None:
        return match.group("bearer") + REDACTED
    return "osk_" + REDACTED


def redact_text(text: str) -> str:
    return _SECRETS.sub(_blank, text) if text else text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes):
        return redact_text(value.decode("utf-8", "backslashreplace"))
    if isinstance(value, dict):
        return {k: REDACTED if str(k).lower() in _SECRET_FIELDS else _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def redact(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor (last before rendering, after tracebacks are formatted)."""
    for name, value in list(event.items()):
        event[name] = REDACTED if name.lower() in _SECRET_FIELDS else _redact_value(value)
    return event


class RedactingFilter(logging.Filter):
    """The same for standard-library records: message, arguments and traceback, rendered and blanked."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact_text(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def install_stdlib_redaction() -> None:
    """A filter on each logger that libraries log to directly (a filter is not inherited by children)."""
    for name in STDLIB_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    )
    # Loggers cache their processor list on first use: refill the one list in place, so a second call
    # (a CLI command run in-process, as the tests do) also reaches loggers cached before it.
    processors = structlog.get_config()["processors"]
    processors[:] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    install_stdlib_redaction()


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]
