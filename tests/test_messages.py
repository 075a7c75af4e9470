"""parse_request: good inputs are accepted as documented, every bad one is an InvalidInput with the right reason."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

import pytest

from worker.core.errors import InvalidInput
from worker.core.messages import MAX_ID_CHARS, ModerationRequest, content_digest, parse_request
from worker.core.verdict import Verdict
from worker.failures.envelope import REASONS

LIMIT = 1000


def _safe_verdict(message_id: str, metadata: dict[str, Any], content_sha256: str) -> Verdict:
    return Verdict(
        id=message_id,
        label="safe",
        action="allow",
        categories=[],
        refusal=None,
        model="m",
        trace_id="0" * 32,
        attempts=1,
        latency_ms=1.0,
        processed_at="2026-01-01T00:00:00.000Z",
        metadata=metadata,
        content_sha256=content_sha256,
    )


def _raw(document: Any) -> bytes:
    return json.dumps(document).encode("utf-8")


def _reason(value: bytes | None, limit: int = LIMIT) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse_request(value, limit)
    assert caught.value.reason in REASONS
    return caught.value.reason


# -- accepted ----------------------------------------------------------------------------------------


def test_minimal_request_defaults_to_prompt_with_empty_metadata() -> None:
    request = parse_request(_raw({"id": "m1", "text": "hello"}), LIMIT)
    assert request == ModerationRequest(id="m1", text="hello", kind="prompt", prompt=None, metadata={})


def test_response_request_carries_its_prompt() -> None:
    document = {"id": "m2", "kind": "response", "prompt": "how do I ...?", "text": "I can't help with that."}
    request = parse_request(_raw(document), LIMIT)
    assert request.kind == "response"
    assert request.prompt == "how do I ...?"
    assert request.guard_request().prompt == "how do I ...?"


def test_metadata_is_echoed_unchanged() -> None:
    metadata = {"user": "u1", "nested": {"list": [1, 2.5, None, True, "é"]}, "emoji": "🙂"}
    request = parse_request(_raw({"id": "m3", "text": "hi", "metadata": metadata}), LIMIT)
    assert request.metadata == metadata


def test_unknown_fields_are_ignored() -> None:
    request = parse_request(_raw({"id": "m4", "text": "hi", "priority": 9, "chunks": [1]}), LIMIT)
    assert request == ModerationRequest(id="m4", text="hi")


def test_prompt_is_ignored_for_a_prompt_kind_request() -> None:
    request = parse_request(_raw({"id": "m5", "text": "hi", "prompt": "earlier turn"}), LIMIT)
    assert request.prompt is None


def test_null_kind_and_metadata_mean_absent() -> None:
    request = parse_request(_raw({"id": "m6", "text": "hi", "kind": None, "metadata": None}), LIMIT)
    assert request.kind == "prompt"
    assert request.metadata == {}


def test_text_and_id_exactly_at_their_limits_are_accepted() -> None:
    request = parse_request(_raw({"id": "i" * MAX_ID_CHARS, "text": "t" * LIMIT}), LIMIT)
    assert len(request.text) == LIMIT


def test_non_ascii_text_is_accepted_as_utf8() -> None:
    value = '{"id": "m7", "text": "¿Qué tal? 你好 \\u00e9"}'.encode()
    assert parse_request(value, LIMIT).text == "¿Qué tal? 你好 é"


# -- invalid_json --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b'{"id": "a", "text": "unterminated',
        b"",
        b'{"id": "a", "text": "x", "score": NaN}',
        b'{"id": "a", "text": "x", "score": Infinity}',
        b'{"id": "a", "text": "x", "score": -Infinity}',
    ],
    ids=["text", "truncated", "empty", "nan", "infinity", "minus-infinity"],
)
def test_not_strict_json_is_invalid_json(value: bytes) -> None:
    assert _reason(value) == "invalid_json"


def test_tombstone_without_value_is_invalid_json() -> None:
    assert _reason(None) == "invalid_json"


# -- invalid_utf8 --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b'{"id": "a", "text": "\xff"}', b'{"id": "a", "text": "caf\xc3"}', b"\xc3\x28"],
    ids=["ff-byte", "truncated-sequence", "bad-continuation"],
)
def test_invalid_utf8_bytes_are_invalid_utf8(value: bytes) -> None:
    assert _reason(value) == "invalid_utf8"


def test_lone_surrogate_escape_in_text_is_invalid_utf8() -> None:
    assert _reason(b'{"id": "a", "text": "hi \\ud800 there"}') == "invalid_utf8"


def test_lone_surrogate_in_metadata_is_invalid_utf8() -> None:
    assert _reason(b'{"id": "a", "text": "hi", "metadata": {"note": ["\\udfff"]}}') == "invalid_utf8"


def test_lone_surrogate_in_a_metadata_key_is_invalid_utf8() -> None:
    assert _reason(b'{"id": "a", "text": "hi", "metadata": {"\\ud83d": 1}}') == "invalid_utf8"


def test_surrogate_pair_escape_is_a_valid_character() -> None:
    request = parse_request(b'{"id": "a", "text": "\\ud83d\\ude42"}', LIMIT)
    assert request.text == "🙂"


# -- wrong_type / missing_field / invalid_value / empty_text / too_large --------------------------------


@pytest.mark.parametrize(
    "document",
    [
        ["id", "text"],
        "a string",
        42,
        None,
        {"id": 1, "text": "x"},
        {"id": "a", "text": ["x"]},
        {"id": "a", "text": {"t": "x"}},
        {"id": "a", "text": 3},
        {"id": "a", "text": "x", "metadata": "user=1"},
        {"id": "a", "text": "x", "metadata": [1]},
        {"id": "a", "text": "x", "kind": 1},
        {"id": "a", "text": "x", "kind": "response", "prompt": ["p"]},
    ],
)
def test_wrong_json_type_is_wrong_type(document: Any) -> None:
    assert _reason(_raw(document)) == "wrong_type"


@pytest.mark.parametrize(
    "document",
    [
        {"text": "x"},
        {"id": "", "text": "x"},
        {"id": " \t", "text": "x"},
        {"id": None, "text": "x"},
        {"id": "a"},
        {"id": "a", "text": None},
        {"id": "a", "text": "x", "kind": "response"},
        {"id": "a", "text": "x", "kind": "response", "prompt": None},
    ],
    ids=["no-id", "empty-id", "blank-id", "null-id", "no-text", "null-text", "no-prompt", "null-prompt"],
)
def test_absent_required_field_is_missing_field(document: dict[str, Any]) -> None:
    assert _reason(_raw(document)) == "missing_field"


@pytest.mark.parametrize(
    "document",
    [
        {"id": "a", "text": "x", "kind": "system"},
        {"id": "a", "text": "x", "kind": "Prompt"},
        {"id": "i" * (MAX_ID_CHARS + 1), "text": "x"},
    ],
    ids=["kind-system", "kind-capitalised", "id-too-long"],
)
def test_value_outside_its_allowed_set_is_invalid_value(document: dict[str, Any]) -> None:
    assert _reason(_raw(document)) == "invalid_value"


@pytest.mark.parametrize("text", ["", " ", "\n\t  \r\n", "\u2003\u00a0"])
def test_blank_text_is_empty_text(text: str) -> None:
    assert _reason(_raw({"id": "a", "text": text})) == "empty_text"


def test_text_over_the_limit_is_too_large() -> None:
    assert _reason(_raw({"id": "a", "text": "t" * (LIMIT + 1)})) == "too_large"


def test_prompt_over_the_limit_is_too_large() -> None:
    document = {"id": "a", "text": "short", "kind": "response", "prompt": "p" * (LIMIT + 1)}
    assert _reason(_raw(document)) == "too_large"


def test_limit_counts_characters_not_bytes() -> None:
    request = parse_request(_raw({"id": "a", "text": "é" * LIMIT}), LIMIT)
    assert len(request.text) == LIMIT


@pytest.mark.parametrize("depth", [100_000, 5_000])
def test_deeply_nested_json_is_rejected_without_crashing(depth: int) -> None:
    as_value = b"[" * depth + b"]" * depth
    in_metadata = b'{"id": "a", "text": "x", "metadata": {"deep": ' + as_value + b"}}"
    assert _reason(as_value) in {"invalid_json", "wrong_type"}
    assert _reason(in_metadata) in {"invalid_json", "wrong_type"}


def test_huge_integer_is_rejected_without_crashing() -> None:
    assert _reason(b'{"id": "a", "text": "x", "metadata": {"n": ' + b"9" * 5000 + b"}}") == "invalid_json"


def test_number_overflowing_to_infinity_is_not_echoed_as_invalid_json() -> None:
    # BUG worker/core/messages.py: json.loads turns 1e400 into float('inf') without calling parse_constant, so the
    # request is accepted and its verdict echoes `Infinity`, which is not JSON (the module promises that
    # what is stored and echoed is always valid JSON). Either reject it, or echo a valid number.
    value = b'{"id": "a", "text": "x", "metadata": {"score": 1e400}}'
    try:
        request = parse_request(value, LIMIT)
    except InvalidInput as exc:
        assert exc.reason == "invalid_json"
        return
    verdict = _safe_verdict(request.id, request.metadata, request.content_sha256)

    def refuse(name: str) -> None:
        raise ValueError(f"verdict JSON holds the non-standard constant {name}")

    json.loads(verdict.to_json(), parse_constant=refuse)


def test_metadata_over_64_kib_is_too_large_so_verdicts_stay_small() -> None:
    assert _reason(_raw({"id": "a", "text": "t", "metadata": {"blob": "x" * (64 * 1024)}})) == "too_large"


def test_metadata_just_under_64_kib_is_echoed() -> None:
    request = parse_request(_raw({"id": "a", "text": "t", "metadata": {"blob": "x" * 60_000}}), LIMIT)
    assert len(request.metadata["blob"]) == 60_000


def test_nesting_that_parses_but_cannot_be_encoded_again_is_invalid_json() -> None:
    for depth in (990, 995, 1000, 5000):
        raw = b'{"id": "a", "text": "t", "metadata": {"x": ' + b"[" * depth + b"]" * depth + b"}}"
        with pytest.raises(InvalidInput) as caught:
            parse_request(raw, LIMIT)
        assert caught.value.reason in {"invalid_json"}, depth


def test_a_verdict_with_an_integer_past_64_bits_in_its_metadata_still_serialises() -> None:
    verdict = replace(_safe_verdict("big", {"n": 2**70, "text": "é"}, "0" * 64), latency_ms=1.5)
    document = json.loads(verdict.to_json())
    assert document["metadata"] == {"n": 2**70, "text": "é"}
    small = json.loads(replace(verdict, metadata={"n": 1}).to_json())
    assert small["metadata"] == {"n": 1} and small["latency_ms"] == 1.5


TRICKY = [
    "",
    "plain",
    'quote " and \\ backslash',
    "\x00\x01\x1f\x7f\x80\x9f",
    "\n\r\t\b\f",
    "é ü 中文",
    "\u2028\u2029",
    "\ufeff\uffff",
    "😀 \U0010ffff",
    "</script>",
]


@pytest.mark.parametrize("text", TRICKY)
def test_content_digest_is_the_sha256_of_the_compact_json_list_it_always_was(text: str) -> None:
    # Stored verdicts are bound to this digest: if its bytes changed, every stored verdict would conflict.
    for parts in (("prompt", None, text), ("response", text, "answer"), ("model", "prompt", None, text)):
        legacy = json.dumps(list(parts), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        assert content_digest(*parts) == hashlib.sha256(legacy).hexdigest()


def test_an_integer_past_64_bits_in_metadata_is_echoed_exactly() -> None:
    request = parse_request(_raw({"id": "a", "text": "t", "metadata": {"n": 2**70, "m": -(2**64)}}), LIMIT)
    assert request.metadata == {"n": 2**70, "m": -(2**64)}


def test_a_record_any_reader_takes_gives_the_same_request_either_way() -> None:
    document = {
        "id": "x",
        "text": "héllo \u2028",
        "kind": "response",
        "prompt": "p",
        "metadata": {"a": [1, 2.5, None]},
    }
    fast = parse_request(json.dumps(document).encode(), LIMIT)  # orjson reads it
    slow = parse_request(json.dumps(document | {"pad": "1" * 19}).encode(), LIMIT)  # a long digit run: stdlib
    assert fast == slow and fast.metadata == {"a": [1, 2.5, None]}
