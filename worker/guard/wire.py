"""What every HTTP guard backend shares on the wire: error bodies (vLLM's nested and flat shapes),
the one mapping of HTTP statuses to guard errors, Retry-After, OpenAI chat-completion replies and model
lists. Pure code, unit-tested without a server.
"""

from __future__ import annotations

import json
import re
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Final

import orjson

from worker.core import errors
from worker.core.errors import (
    GuardBadReply,
    GuardConfigError,
    GuardContextOverflow,
    GuardError,
    GuardModelMissing,
    GuardRejected,
    GuardTimeout,
    GuardUnavailable,
)

_DELTA_SECONDS_RE: Final = re.compile(r"\d+(\.\d+)?")
# vLLM words context overflow two ways: the OpenAI-style check ("maximum context length is N tokens")
# and the engine's input check ("... is longer than the maximum model length of N").
_OVERFLOW_MARKERS: Final = ("maximum context length", "maximum model length")

MAX_MESSAGE_CHARS: Final = 300
_RAW_BODY_CHARS: Final = 200


def parse_retry_after(value: str, now: float) -> float | None:
    """Seconds to wait from a Retry-After value (delta seconds or HTTP date), or None if unusable.

    ``now`` is the current Unix time; a date in the past gives 0.
    """
    value = value.strip()
    if _DELTA_SECONDS_RE.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # "-0000" parses zone-less; HTTP dates are always GMT
    return max(0.0, when.timestamp() - now)


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``worker.core.errors.one_line`` with the shorter limit used for guard messages."""
    return errors.one_line(text, limit)


def _message_from_json(doc: Any) -> str | None:
    """The message of a nested (vLLM >= 0.10.1), flat (older vLLM) or ``{"error": "..."}`` body."""
    if not isinstance(doc, dict):
        return None
    error = doc.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    for key in ("message", "detail"):
        if key in doc:
            value = doc[key]
            return value if isinstance(value, str) else json.dumps(value)
    return None


def error_message(body: bytes) -> str:
    """A one-line, bounded message from an error response body of any shape."""
    text = body.decode("utf-8", errors="replace")
    try:
        message = _message_from_json(json.loads(text))
    except ValueError:
        message = None
    if message is None:
        message = text[:_RAW_BODY_CHARS] or "(empty body)"
    return one_line(message)


def error_for_status(status: int, message: str, retry_after_s: float | None = None) -> GuardError:
    """The GuardError for a non-200 reply; the one place that maps HTTP statuses to the taxonomy."""
    text = f"guard HTTP {status}: {message}"
    if 300 <= status < 400:
        # Never followed: a redirect would re-send the user's text to another origin (https -> http too).
        return GuardUnavailable(
            f"guard HTTP {status} redirect ({message}); redirects are not followed: "
            "set GUARDQ_GUARD_URL to the address that answers",
            status=status,
        )
    if status == 408:
        return GuardTimeout(
            text, status=status
        )  # a gateway gave up waiting: transient, not this text's fault
    if status == 429 or status >= 500:
        return GuardUnavailable(text, status=status, retry_after_s=retry_after_s)
    if status == 400 and any(marker in message.lower() for marker in _OVERFLOW_MARKERS):
        return GuardContextOverflow(text, status=status)
    if status in (401, 403):
        return GuardConfigError(f"{text} (check the guard API key)", status=status)
    if status == 404:
        return GuardModelMissing(f"{text} (model not served, or a wrong guard URL)", status=status)
    return GuardRejected(text, status=status)


def reply_content(body: bytes) -> str:
    """``choices[0].message.content`` of a 200 chat-completions body; GuardBadReply if absent or truncated."""
    try:
        doc = orjson.loads(body)  # on every message's path; it refuses what it cannot read as ValueError
    except (ValueError, RecursionError):
        raise GuardBadReply(f"guard reply is not JSON ({len(body)} bytes)") from None
    choices = doc.get("choices") if isinstance(doc, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise GuardBadReply(f"guard reply has no choices ({len(body)} bytes)")
    choice = choices[0]
    # A verdict cut off by max_tokens may have lost its Categories or Refusal line.
    if choice.get("finish_reason") == "length":
        raise GuardBadReply("guard reply truncated (finish_reason=length)")
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise GuardBadReply(f"guard reply has no message content ({len(body)} bytes)")
    return content


def model_ids(body: bytes) -> list[str] | None:
    """The model ids of a ``GET /v1/models`` body, or None if it is not an OpenAI model list."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        return None
    return [str(entry["id"]) for entry in data if isinstance(entry, dict) and "id" in entry]


def context_window(body: bytes, model: str) -> int | None:
    """The ``max_model_len`` vLLM reports for ``model`` in a ``GET /v1/models`` body, if it reports one."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    data = doc.get("data") if isinstance(doc, dict) else None
    for entry in data if isinstance(data, list) else []:
        if isinstance(entry, dict) and entry.get("id") == model:
            window = entry.get("max_model_len")
            return window if isinstance(window, int) and not isinstance(window, bool) and window > 0 else None
    return None
