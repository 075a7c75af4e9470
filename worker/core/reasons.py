"""Why a message was dead-lettered: one closed, documented set (``guardq.error.reason``). Every error
class names the reason it is dead-lettered with; the README's "Dead-letter reasons" repeats the list."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """A dead-letter reason; ``description`` says what it means for the user."""

    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_VALUE = "invalid_value"
    EMPTY_TEXT = "empty_text"
    TOO_LARGE = "too_large"
    GUARD_REJECTED = "guard_rejected"
    CONTEXT_LENGTH = "context_length"
    RETRIES_EXHAUSTED = "retries_exhausted"
    GUARD_BAD_REPLY = "guard_bad_reply"
    GUARD_ERROR = "guard_error"
    UNDECODABLE = "undecodable"
    ID_CONFLICT = "id_conflict"
    INTERNAL_ERROR = "internal_error"

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS: dict[Reason, str] = {
    Reason.INVALID_JSON: "the value is not JSON (or has no value at all)",
    Reason.INVALID_UTF8: "the value, or a string inside it, is not valid UTF-8",
    Reason.MISSING_FIELD: "a required field (id, text, prompt for kind=response) is missing or empty",
    Reason.WRONG_TYPE: "a field, or the value itself, has the wrong JSON type",
    Reason.INVALID_VALUE: "a field has a value outside its allowed set (kind, id length)",
    Reason.EMPTY_TEXT: "text is empty or only white space",
    Reason.TOO_LARGE: "text or prompt is longer than GUARDQ_MAX_TEXT_CHARS, or metadata is over 64 KiB",
    Reason.GUARD_REJECTED: "the guard refused the input as sent (HTTP 400/413/422)",
    Reason.CONTEXT_LENGTH: "the text does not fit the guard model's context window",
    Reason.RETRIES_EXHAUSTED: "transient guard failures outlasted the retry budget",
    Reason.GUARD_BAD_REPLY: "the guard answered twice with something that is not a verdict",
    Reason.GUARD_ERROR: "the guard failed in a way guardq does not classify (see guardq.error.message)",
    Reason.UNDECODABLE: "the record (or its whole batch) could not be decoded: codec, CRC, header bytes, size",
    Reason.ID_CONFLICT: "the id already has a verdict, or a moderation in flight, for other content",
    Reason.INTERNAL_ERROR: "guardq failed on this message unexpectedly (a bug; please report it with the headers)",
}
