"""The verdict documents (``schemas/verdict.schema.json``): built by the worker, stored in Redis, published on
the verdict topic, and read back by clients (``parse_verdict``, ``Verdict.from_json``).

Reading is lenient where the schema allows growth (unknown fields are ignored; ``chunks``, ``content_sha256``
and ``provisional`` may be missing in verdicts of older versions) and strict about the fields a caller acts on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, cast, get_args

import orjson

from worker.core.guard_types import Label
from worker.core.policy import Action, Policy


def _document(value: object) -> bytes:
    """Compact UTF-8 JSON of a verdict dataclass (orjson; the standard library only for what orjson
    refuses: an integer past 64 bits in the producer's metadata)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(asdict(value), ensure_ascii=False, separators=(",", ":")).encode("utf-8")  # type: ignore[call-overload]


@dataclass(frozen=True)
class Verdict:
    """The verdict document, stored in Redis and published on the verdict topic."""

    id: str
    label: Label
    action: Action
    categories: list[str]
    refusal: bool | None
    model: str
    trace_id: str
    attempts: int
    latency_ms: float
    processed_at: str
    metadata: dict[str, Any]
    content_sha256: str
    chunks: int = 1
    provisional: bool = False

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON."""
        return _document(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> Verdict:
        """Read a final verdict (a record value of the verdict topic, or what Redis stores). Raises
        ``ValueError`` naming the field that is missing or wrong, or when the verdict is provisional
        (``parse_verdict`` reads both kinds)."""
        document = _verdict_document(data)
        if document.get("provisional") is True:
            raise ValueError(f"verdict {document.get('id')!r} is provisional: read it with parse_verdict")
        return cls(
            **_shared_fields(document),
            label=_choice(document, "label", get_args(Label)),
            categories=_categories(document),
            refusal=_refusal(document),
            chunks=_typed(document, "chunks", int, 1),
        )


PROVISIONAL_REASON = "guard_unavailable"


@dataclass(frozen=True)
class ProvisionalVerdict:
    """What a message gets at once during a guard outage under a fallback policy (GUARDQ_OUTAGE_POLICY):
    no label, the policy's action. It never counts as moderated: the message is parked and its final
    ``Verdict`` replaces this one once the guard is back."""

    id: str
    action: Action
    model: str
    trace_id: str
    attempts: int
    latency_ms: float
    processed_at: str
    metadata: dict[str, Any]
    content_sha256: str
    label: None = None
    categories: list[str] = field(default_factory=list)
    refusal: None = None
    provisional: bool = True
    reason: str = PROVISIONAL_REASON

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON."""
        return _document(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> ProvisionalVerdict:
        """Read a provisional verdict; raises ``ValueError`` naming a missing or wrong field."""
        document = _verdict_document(data)
        if document.get("provisional") is not True:
            raise ValueError(f"verdict {document.get('id')!r} is not provisional: read it with parse_verdict")
        return cls(**_shared_fields(document), reason=_typed(document, "reason", str, PROVISIONAL_REASON))


def parse_verdict(data: bytes | str) -> Verdict | ProvisionalVerdict:
    """Read a verdict of either kind: a ``ProvisionalVerdict`` (given during a guard outage, followed by
    the final one for the same id) or a ``Verdict``. Raises ``ValueError`` naming what is wrong."""
    if _verdict_document(data).get("provisional") is True:
        return ProvisionalVerdict.from_json(data)
    return Verdict.from_json(data)


_MISSING = object()


def _verdict_document(data: bytes | str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise ValueError(f"a verdict must be JSON: {str(exc)[:200]}") from None
    if not isinstance(document, dict):
        raise ValueError(f"a verdict is a JSON object, not a {type(document).__name__}")
    return document


def _shared_fields(document: dict[str, Any]) -> dict[str, Any]:
    """The fields both kinds of verdict have, read and checked."""
    return {
        "id": _typed(document, "id", str),
        "action": _choice(document, "action", get_args(Action)),
        "model": _typed(document, "model", str),
        "trace_id": _typed(document, "trace_id", str),
        "attempts": _typed(document, "attempts", int),
        "latency_ms": float(_typed(document, "latency_ms", (int, float))),
        "processed_at": _typed(document, "processed_at", str),
        "metadata": _typed(document, "metadata", dict),
        "content_sha256": _typed(document, "content_sha256", str, ""),
    }


def _typed(document: dict[str, Any], name: str, kind: Any, default: Any = _MISSING) -> Any:
    value = document.get(name, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise ValueError(f"verdict field {name!r} is missing")
        return default
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"verdict field {name!r} has the wrong type ({type(value).__name__})")
    return value


def _choice(document: dict[str, Any], name: str, allowed: tuple[str, ...]) -> Any:
    value = document.get(name)
    if value not in allowed:
        raise ValueError(f"verdict field {name!r} is {value!r}, not one of {', '.join(allowed)}")
    return value


def _categories(document: dict[str, Any]) -> list[str]:
    value = _typed(document, "categories", list)
    if not all(isinstance(name, str) for name in value):
        raise ValueError("verdict field 'categories' must list strings")
    return cast(list[str], value)


def _refusal(document: dict[str, Any]) -> bool | None:
    value = document.get("refusal")
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"verdict field 'refusal' has the wrong type ({type(value).__name__})")
    return value


def stored_for_publish(document: bytes, policy: Policy) -> tuple[bytes, str | None]:
    """A stored verdict as it is published again, and the trace id it names (None when none or when it
    does not parse). One stored by a version without policies gains the current policy's ``action``."""
    try:
        parsed = orjson.loads(document)
    except orjson.JSONDecodeError:
        return document, None
    if not isinstance(parsed, dict):
        return document, None
    trace_id = parsed.get("trace_id")
    label = parsed.get("label")
    if "action" not in parsed and label in ("safe", "unsafe", "controversial"):
        exact = json.loads(document)  # read again exactly: its metadata may hold an integer past 64 bits
        categories = exact.get("categories")
        named = [name for name in categories if isinstance(name, str)] if isinstance(categories, list) else []
        exact["action"] = policy.action(label, named)
        document = json.dumps(exact, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return document, str(trace_id) if trace_id else None
