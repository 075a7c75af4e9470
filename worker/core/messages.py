"""The input and verdict documents (see ``schemas/``): parsing input bytes, building verdict JSON.

Parsing is strict: invalid UTF-8 anywhere (including lone surrogates smuggled in as JSON escapes) and
non-standard JSON (NaN, Infinity) are rejected, never repaired, so what is stored and echoed is always
valid UTF-8 JSON.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, cast

import orjson

from worker.core.errors import InvalidInput
from worker.core.guard_types import GuardRequest, Kind
from worker.core.reasons import Reason

MAX_ID_CHARS = 512
# Headers ride along into dead letters and every record costs memory for each of them: a record over
# either bound is dead-lettered as too_large before anything else is done with it.
MAX_HEADERS = 128
MAX_HEADER_BYTES = 64 * 1024
# Metadata is echoed in every verdict; bounding it keeps verdict records far below broker size limits.
MAX_METADATA_BYTES = 64 * 1024


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _check_encodable(value: Any) -> None:
    # json.loads turns "\ud800" escapes into lone surrogates: valid JSON, invalid UTF-8.
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            Reason.INVALID_UTF8, f"string with a lone surrogate at position {exc.start}"
        ) from None
    except ValueError:
        # A number like 1e400 parses to infinity, which cannot be echoed as standard JSON.
        raise InvalidInput(Reason.INVALID_JSON, "a number is out of range (overflows to infinity)") from None
    except RecursionError:
        raise InvalidInput(Reason.INVALID_JSON, "nested too deeply") from None


# orjson reads an integer past 64 bits as a float (it would echo 2**70 as 1.1805916207174113e+21): a
# value with a run of digits that long is read by the standard library instead.
_LONG_NUMBER = re.compile(rb"[0-9]{19}")


def decode_json_object(value: bytes | None) -> dict[str, Any]:
    """Decode a record value as a strict UTF-8 JSON object, or raise ``InvalidInput``.

    orjson reads almost every value: it refuses invalid UTF-8, lone surrogates and NaN/Infinity by
    itself, and what it can write back (nesting within its limit) is known to be echoable. Whatever it
    refuses (or may read lossily) is read again by the standard library, whose errors name the
    problem."""
    if value is None:
        raise InvalidInput(Reason.INVALID_JSON, "record has no value (tombstone)")
    if _LONG_NUMBER.search(value) is None:
        try:
            fast = orjson.loads(value)
            orjson.dumps(fast)
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):
            pass
        else:
            if isinstance(fast, dict):
                return fast
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(Reason.INVALID_UTF8, f"invalid UTF-8 at byte {exc.start}") from None
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(Reason.INVALID_JSON, f"not JSON: {str(exc)[:200]}") from None
    if not isinstance(document, dict):
        raise InvalidInput(Reason.WRONG_TYPE, f"value is a JSON {type(document).__name__}, not an object")
    _check_encodable(document)
    return document


def _string_field(document: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = document.get(name)
    if value is None:
        if required:
            raise InvalidInput(Reason.MISSING_FIELD, f"field '{name}' is missing")
        return None
    if not isinstance(value, str):
        raise InvalidInput(Reason.WRONG_TYPE, f"field '{name}' must be a string, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class ModerationRequest:
    """A validated input message."""

    id: str
    text: str
    kind: Kind = "prompt"
    prompt: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def guard_request(self) -> GuardRequest:
        """What the guard backend is asked."""
        return GuardRequest(text=self.text, kind=self.kind, prompt=self.prompt)

    @cached_property
    def content_sha256(self) -> str:
        """The hash a verdict is bound to: SHA-256 (hex) of what the guard judges (kind, prompt, text)."""
        return content_digest(self.kind, self.prompt, self.text)


def content_digest(*parts: str | None) -> str:
    """SHA-256 (hex) of ``parts`` in an unambiguous encoding (a JSON list): no two lists share one."""
    # orjson writes exactly json.dumps(ensure_ascii=False, separators=(",", ":")); a test holds it to that,
    # since a digest that changed would make every stored verdict a conflict.
    return hashlib.sha256(orjson.dumps(list(parts))).hexdigest()


def _parse_id(document: dict[str, Any]) -> str:
    message_id = _string_field(document, "id", required=True)
    assert message_id is not None
    if not message_id.strip():
        raise InvalidInput(Reason.MISSING_FIELD, "field 'id' is empty")
    if len(message_id) > MAX_ID_CHARS:
        raise InvalidInput(Reason.INVALID_VALUE, f"field 'id' is longer than {MAX_ID_CHARS} characters")
    return message_id


def _parse_kind(document: dict[str, Any]) -> Kind:
    kind = _string_field(document, "kind", required=False)
    if kind is None:
        return "prompt"
    if kind not in ("prompt", "response"):
        raise InvalidInput(
            Reason.INVALID_VALUE, f"field 'kind' must be 'prompt' or 'response', got {kind[:40]!r}"
        )
    return cast(Kind, kind)


def parse_request(value: bytes | None, max_text_chars: int) -> ModerationRequest:
    """Validate one input record value; raises ``InvalidInput`` with a reason code when it is bad."""
    document = decode_json_object(value)
    message_id = _parse_id(document)
    text = _string_field(document, "text", required=True)
    assert text is not None
    kind = _parse_kind(document)
    prompt = _string_field(document, "prompt", required=True) if kind == "response" else None
    if prompt is not None and not prompt.strip():
        raise InvalidInput(Reason.MISSING_FIELD, "field 'prompt' is empty (required when kind=response)")
    metadata = document.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise InvalidInput(
            Reason.WRONG_TYPE, f"field 'metadata' must be an object, got {type(metadata).__name__}"
        )
    metadata_bytes = len(json.dumps(metadata, ensure_ascii=False).encode("utf-8")) if metadata else 0
    if metadata_bytes > MAX_METADATA_BYTES:
        raise InvalidInput(
            Reason.TOO_LARGE, f"metadata has {metadata_bytes} bytes, over the limit of {MAX_METADATA_BYTES}"
        )
    if not text.strip():
        raise InvalidInput(Reason.EMPTY_TEXT, "field 'text' is empty")
    longest = max(len(text), len(prompt or ""))
    if longest > max_text_chars:
        raise InvalidInput(
            Reason.TOO_LARGE, f"text has {longest} characters, over the limit of {max_text_chars}"
        )
    return ModerationRequest(id=message_id, text=text, kind=kind, prompt=prompt, metadata=metadata)


def header_bytes(headers: Sequence[tuple[str, bytes | None]]) -> int:
    """The bytes of a record's header names and values."""
    return sum(len(name) + len(value or b"") for name, value in headers)


def check_headers(headers: Sequence[tuple[str, bytes | None]]) -> None:
    """Raise ``InvalidInput`` (too_large) when a record has more headers, or header bytes, than allowed."""
    if len(headers) > MAX_HEADERS:
        raise InvalidInput(
            Reason.TOO_LARGE, f"record has {len(headers)} headers, over the limit of {MAX_HEADERS}"
        )
    size = header_bytes(headers)
    if size > MAX_HEADER_BYTES:
        raise InvalidInput(
            Reason.TOO_LARGE, f"record has {size} bytes of headers, over the limit of {MAX_HEADER_BYTES}"
        )
