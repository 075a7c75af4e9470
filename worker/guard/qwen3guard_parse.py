"""Pure functions of the Qwen3Guard client: the guard's text output, vLLM error bodies, HTTP status
classification, Retry-After, and neutralising chat-template control tokens in user text.

Kept free of I/O so every rule is unit-tested without a server.
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
    GuardRejected,
    GuardTimeout,
    GuardUnavailable,
)
from worker.core.guard_types import Kind, Label
from worker.core.taxonomies import QWEN3GUARD_CATEGORIES

CATEGORIES: Final[frozenset[str]] = frozenset(QWEN3GUARD_CATEGORIES)

_LABELS: Final[dict[str, Label]] = {"safe": "safe", "unsafe": "unsafe", "controversial": "controversial"}
_REFUSALS: Final[dict[str, bool]] = {"yes": True, "no": False}

# A user text carrying these would let it close its own turn and forge the guard's answer.
_CONTROL_TOKENS: Final[dict[str, str]] = {
    "<|im_start|>": "[im_start]",
    "<|im_end|>": "[im_end]",
    "<|endoftext|>": "[endoftext]",
    "<think>": "[think]",
    "</think>": "[/think]",
}
_CONTROL_RE: Final = re.compile("|".join(re.escape(token) for token in _CONTROL_TOKENS))

_KEY_LINE_RE: Final = re.compile(r"^\s*(safety|categories|refusal)\s*:(.*)$", re.IGNORECASE)
_KEY_ORDER: Final = ("safety", "categories", "refusal")
_DELTA_SECONDS_RE: Final = re.compile(r"\d+(\.\d+)?")
# vLLM words context overflow two ways: the OpenAI-style check ("maximum context length is N tokens")
# and the engine's input check ("... is longer than the maximum model length of N").
_OVERFLOW_MARKERS: Final = ("maximum context length", "maximum model length")

MAX_MESSAGE_CHARS: Final = 300
_RAW_BODY_CHARS: Final = 200


# Qwen3Guard's chat template frames the text with plain-text markers (``<BEGIN CONVERSATION>``, ``USER:``,
# ``<END CONVERSATION>``) and asks for ``Safety:``/``Categories:``/``Refusal:`` lines. A text that writes
# them could try to close the frame and write its own verdict, so they are escaped: the angle brackets of
# ``<BEGIN ...>``/``<END ...>`` and the colon of a line-leading role or verdict key become look-alikes
# that read the same to a human and match nothing in the template.
_FRAME_MARKER_RE: Final = re.compile(r"<(\s*(?:BEGIN|END)\b[^<>\n]{0,80})>", re.IGNORECASE)
_LINE_KEY_RE: Final = re.compile(
    r"^(\s*(?:USER|ASSISTANT|SYSTEM|SAFETY|CATEGORIES|REFUSAL)\s*):", re.IGNORECASE
)
_LOOKALIKE_COLON: Final = "\ua789"  # MODIFIER LETTER COLON
# The most categories a reply may list, and the longest name kept: an unknown category is kept as the
# guard wrote it, so a confused guard must not write an unbounded verdict.
MAX_CATEGORIES: Final = 16
MAX_CATEGORY_CHARS: Final = 100


def neutralise(text: str) -> str:
    """Replace chat-template control tokens with visible, harmless look-alikes (one pass, exact match)."""
    return _CONTROL_RE.sub(lambda match: _CONTROL_TOKENS[match.group(0)], text)


def escape_frame(text: str) -> str:
    """``neutralise`` plus the escaping of Qwen3Guard's frame markers and line-leading keys (see above)."""
    text = _FRAME_MARKER_RE.sub(lambda match: f"\u2039{match.group(1)}\u203a", neutralise(text))
    # Lines as the parser splits them (\n, \r, \u2028, \x85 ...), so no line break slips past either.
    return "".join(
        _LINE_KEY_RE.sub(lambda match: match.group(1) + _LOOKALIKE_COLON, line, count=1)
        for line in text.splitlines(keepends=True)
    )


def _verdict_lines(content: str) -> dict[str, str]:
    """The ``Safety``/``Categories``/``Refusal`` lines, keys lower-cased. The reply must be exactly these:
    the Safety line first (where the model writes it), then Categories, then Refusal, nothing else; a
    verdict written anywhere else (echoed from the text) is not the model's."""
    lines = [line for line in content.splitlines() if line.strip()]
    matches = [_KEY_LINE_RE.match(line) for line in lines]
    keys = [match.group(1).lower() if match else None for match in matches]
    if "safety" not in keys:
        raise GuardBadReply(f"guard reply has no Safety line ({len(content)} chars)")
    if keys[0] != "safety":
        raise GuardBadReply("guard reply does not begin with its Safety line")
    if None in keys:
        raise GuardBadReply(f"guard reply has {keys.count(None)} line(s) that are not part of a verdict")
    if len(set(keys)) != len(keys):
        repeated = next(key for key in keys if keys.count(key) > 1)
        raise GuardBadReply(f"guard reply repeats the {repeated!r} line")
    if keys != sorted(keys, key=_KEY_ORDER.index):
        raise GuardBadReply("guard reply has its lines out of order")
    return {key: match.group(2).strip() for key, match in zip(keys, matches, strict=True) if key and match}


def _category_name(raw: str) -> str:
    """A category as the guard wrote it, on one line, without control characters, bounded."""
    printable = "".join(char for char in raw if char.isprintable())
    return " ".join(printable.split())[:MAX_CATEGORY_CHARS]


def _parse_categories(value: str | None) -> tuple[str, ...]:
    """The names on the Categories line. One outside Qwen3Guard's list is kept as given (a newer model's
    category, a spelling variant): dropping it could turn an unsafe verdict's reasons into none."""
    if value is None or value.lower() == "none":
        return ()
    names: list[str] = []
    for raw in value.split(","):
        name = _category_name(raw)
        if not name:
            continue  # tolerate a trailing comma; an empty name carries no claim
        if name not in names:
            names.append(name)
    return tuple(names[:MAX_CATEGORIES])


def unknown_categories(categories: tuple[str, ...]) -> list[str]:
    """The names in ``categories`` that are not in Qwen3Guard's documented list."""
    return [name for name in categories if name not in CATEGORIES]


def parse_guard_output(content: str, kind: Kind) -> tuple[Label, tuple[str, ...], bool | None]:
    """Parse Qwen3Guard-Gen output into (label, categories, refusal); raises GuardBadReply if malformed.

    Refusal is only read for response moderation, and is None when the line is absent. Error messages
    never quote the reply: a confused guard may echo the user's text.
    """
    values = _verdict_lines(content)
    safety = values["safety"]
    label = _LABELS.get(safety.lower())
    if label is None:
        raise GuardBadReply(f"guard reply has an unknown Safety value ({len(safety)} chars)")
    categories = _parse_categories(values.get("categories"))
    refusal: bool | None = None
    if kind == "response" and "refusal" in values:
        refusal = _REFUSALS.get(values["refusal"].lower())
        if refusal is None:
            raise GuardBadReply("guard reply has an unknown Refusal value")
    return label, categories, refusal


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
        return GuardConfigError(f"{text} (unknown model or wrong guard URL)", status=status)
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
