"""Logging: one JSON object per line, with the trace and span ids of the current span.

Log calls never include message text or secrets; the formatter adds only what the call passed. As a
second line of defence, the secret values given to ``configure`` (``secrets_of(settings)``) are masked in
every line, should a client library's error message ever quote one.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import unquote

import orjson
from opentelemetry import trace

from worker.config.spec import url_passwords
from worker.core.times import format_rfc3339

if TYPE_CHECKING:
    from worker.config.settings import Settings

MASK = "***"
# Shorter values would mask ordinary words; no real password or key is this short.
MIN_SECRET_CHARS = 6


def secrets_of(settings: Settings) -> list[str]:
    """The secret values of ``settings``: API key, passwords, and the passwords inside GUARDQ_REDIS_URL."""
    values = [settings.guard_api_key, settings.kafka_sasl_password, settings.redis_password]
    for password in url_passwords(settings.redis_url):
        values += [password, unquote(password)]
    return [value for value in values if value]


class JsonFormatter(logging.Formatter):
    """Formats records as JSON lines: time, level, logger, message, trace_id, span_id (when in a span);
    ``secrets`` are masked wherever they would appear."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": format_rfc3339(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.mask(record.getMessage()),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        if record.exc_info:
            entry["error"] = self.mask(self.formatException(record.exc_info))
        try:
            return orjson.dumps(entry).decode("utf-8")
        except orjson.JSONEncodeError:  # a lone surrogate in a message: the standard library escapes it
            return json.dumps(entry)


def configure(level: str = "INFO", *, json_lines: bool = True, secrets: Iterable[str] = ()) -> None:
    """Send guardq's logs to stderr, JSON lines with ``secrets`` masked; quieten chatty client libraries."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter(secrets))
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
