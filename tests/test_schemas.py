"""The JSON Schemas in schemas/ are valid and describe what the real code reads and writes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from jsonschema import Draft202012Validator
from opentelemetry.sdk.trace import TracerProvider

from worker.core.errors import GuardRejected, GuardUnavailable, InvalidInput
from worker.core.messages import parse_request
from worker.core.times import format_rfc3339, utc_now_rfc3339
from worker.core.verdict import ProvisionalVerdict, Verdict
from worker.dev.demo import DEMO_MAX_TEXT_CHARS
from worker.failures.envelope import REASONS, DeadLetterEnvelope, carried_headers, format_history_entry
from worker.kafka.reading import render
from worker.schemas import NAMES, schema, schema_text
from worker.telemetry import tracing

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "worker" / "dev" / "data" / "samples.jsonl"
MAX_TEXT_CHARS = 100_000


def _load(name: str) -> dict[str, Any]:
    return schema(name)


def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(_load(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


def _errors(name: str, document: Any) -> list[str]:
    return [error.message for error in _validator(name).iter_errors(document)]


@pytest.fixture
def span_factory() -> Any:
    provider = TracerProvider()
    tracer = tracing.get_tracer(provider)
    return tracer.start_as_current_span


# -- the schemas themselves ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["input", "verdict", "deadletter"])
def test_schema_is_valid_draft_2020_12_with_id_title_and_description(name: str) -> None:
    schema = _load(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"{name}.schema.json")
    assert schema["title"]
    assert schema["description"]


def test_dead_letter_reason_enum_equals_the_reasons_the_worker_knows() -> None:
    reason = _load("deadletter")["properties"]["headers"]["properties"]["guardq.error.reason"]
    assert sorted(reason["enum"]) == sorted(REASONS)


@pytest.mark.parametrize("name", ["verdict", "deadletter"])
def test_output_schemas_tell_consumers_to_ignore_unknown_fields(name: str) -> None:
    extra = _load(name)["additionalProperties"]
    assert isinstance(extra, dict)
    assert "ignore unknown fields" in extra["description"]


# -- verdicts ----------------------------------------------------------------------------------------


def _verdict(span: Any, *, refusal: bool | None, metadata: dict[str, Any]) -> Verdict:
    return Verdict(
        id="req-1",
        label="unsafe",
        action="block",
        categories=["Violent", "PII"],
        refusal=refusal,
        model="Qwen/Qwen3Guard-Gen-8B",
        trace_id=tracing.trace_id_hex(span),
        attempts=2,
        latency_ms=12.345,
        processed_at=utc_now_rfc3339(),
        metadata=metadata,
        content_sha256="ab" * 32,
    )


def test_prompt_verdict_from_the_code_matches_the_verdict_schema(span_factory: Any) -> None:
    with span_factory("moderate") as span:
        document = json.loads(_verdict(span, refusal=None, metadata={"user": "u1", "n": [1, 2.5]}).to_json())
    assert _errors("verdict", document) == []


@pytest.mark.parametrize("refusal", [True, False, None])
def test_response_verdict_from_the_code_matches_the_verdict_schema(
    span_factory: Any, refusal: bool | None
) -> None:
    with span_factory("moderate") as span:
        document = json.loads(_verdict(span, refusal=refusal, metadata={}).to_json())
    assert _errors("verdict", document) == []


def test_verdict_with_a_field_added_by_a_later_version_still_validates(span_factory: Any) -> None:
    with span_factory("moderate") as span:
        document = json.loads(_verdict(span, refusal=None, metadata={}).to_json())
    document["scores"] = [{"label": "safe"}]
    assert _errors("verdict", document) == []


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("label", "maybe"),
        ("trace_id", "ABCDEF0123456789ABCDEF0123456789"),
        ("trace_id", "0" * 31),
        ("attempts", 0),
        ("processed_at", "2026-01-01 10:00:00"),
        ("processed_at", "2026-01-01T10:00:00+02:00"),
        ("refusal", "no"),
        ("metadata", None),
    ],
)
def test_verdict_schema_rejects_a_bad_field(span_factory: Any, field: str, bad: Any) -> None:
    with span_factory("moderate") as span:
        document = json.loads(_verdict(span, refusal=None, metadata={}).to_json())
    document[field] = bad
    assert _errors("verdict", document)


# -- dead letters as `guardq tail --topic dlq` prints them ---------------------------------------------


def _dead_letter_record(
    headers: list[tuple[str, bytes]], *, key: bytes | None, value: bytes | None
) -> ConsumerRecord:
    return ConsumerRecord(
        topic="moderation.dlq",
        partition=3,
        offset=41,
        timestamp=1_767_225_600_000,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=headers,
    )


def _dead_letter_headers(span: Any, error: Any, attempts: int) -> list[tuple[str, bytes]]:
    incoming = [("source", b"web"), ("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")]
    envelope = DeadLetterEnvelope.for_failure(
        record_topic="moderation.requests",
        record_partition=5,
        record_offset=1234,
        record_timestamp=format_rfc3339(datetime.now(UTC)),
        incoming=incoming,
        error=error,
        attempts=attempts,
        now=utc_now_rfc3339(),
        traceparent=tracing.traceparent_of(span),
    ).with_attempt(format_history_entry(error, attempts, "moderation.requests"))
    return carried_headers(incoming) + envelope.to_headers()


@pytest.mark.parametrize(
    ("error", "attempts"),
    [
        (InvalidInput("missing_field", "field 'text' is missing"), 0),
        (GuardRejected("HTTP 422:\n  unprocessable\tentity " + "x" * 900, status=422), 1),
        (GuardUnavailable("HTTP 503", status=503), 3),
    ],
)
def test_dead_letter_rendered_by_tail_matches_the_dead_letter_schema(
    span_factory: Any, error: Any, attempts: int
) -> None:
    with span_factory("moderate") as span:
        headers = _dead_letter_headers(span, error, attempts)
    record = _dead_letter_record(headers, key=b"req-1", value=b'{"id": "req-1"}')
    document = json.loads(render(record, value_only=False))
    assert _errors("deadletter", document) == []
    assert document["headers"]["source"] == "web"


def test_dead_letter_with_binary_key_and_value_rendered_as_base64_matches_the_schema(
    span_factory: Any,
) -> None:
    with span_factory("moderate") as span:
        headers = _dead_letter_headers(span, InvalidInput("invalid_utf8", "invalid UTF-8 at byte 0"), 0)
    headers.append(("binary-header", b"\xff\xfe"))
    record = _dead_letter_record(headers, key=b"\xff\x00", value=b"\xc3\x28 not utf-8")
    document = json.loads(render(record, value_only=False))
    assert "key_b64" in document
    assert "value_b64" in document
    assert _errors("deadletter", document) == []


def test_dead_lettered_tombstone_without_key_matches_the_schema(span_factory: Any) -> None:
    with span_factory("moderate") as span:
        headers = _dead_letter_headers(
            span, InvalidInput("invalid_json", "record has no value (tombstone)"), 0
        )
    document = json.loads(render(_dead_letter_record(headers, key=None, value=None), value_only=False))
    assert document["key"] is None
    assert document["value"] is None
    assert _errors("deadletter", document) == []


@pytest.mark.parametrize(
    ("header", "bad"),
    [
        ("guardq.error.reason", "made_up"),
        ("guardq.attempts", "three"),
        ("guardq.original.offset", "-1"),
        ("guardq.first_failed_at", "yesterday"),
        ("traceparent", "00-abc-def-01"),
    ],
)
def test_dead_letter_schema_rejects_a_bad_header(span_factory: Any, header: str, bad: str) -> None:
    with span_factory("moderate") as span:
        headers = _dead_letter_headers(span, GuardUnavailable("HTTP 503"), 3)
    document = json.loads(render(_dead_letter_record(headers, key=b"k", value=b"v"), value_only=False))
    document["headers"][header] = bad
    assert _errors("deadletter", document)


def test_dead_letter_schema_requires_the_envelope_headers(span_factory: Any) -> None:
    with span_factory("moderate") as span:
        headers = _dead_letter_headers(span, GuardUnavailable("HTTP 503"), 3)
    document = json.loads(render(_dead_letter_record(headers, key=b"k", value=b"v"), value_only=False))
    del document["headers"]["guardq.error.reason"]
    assert _errors("deadletter", document)


# -- input: the schema and worker.core.messages.parse_request agree ------------------------------------------


def _sample_lines() -> list[str]:
    return [line for line in SAMPLES.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_bundled_samples_the_parser_accepts_match_the_input_schema() -> None:
    accepted = 0
    for number, line in enumerate(_sample_lines(), start=1):
        try:
            parse_request(line.encode("utf-8"), DEMO_MAX_TEXT_CHARS)
        except InvalidInput:
            continue  # the sample set holds a few malformed lines on purpose
        assert _errors("input", json.loads(line)) == [], f"samples.jsonl line {number}"
        accepted += 1
    assert accepted > 200


def test_bundled_malformed_samples_are_rejected_by_the_input_schema_too() -> None:
    rejected = 0
    for number, line in enumerate(_sample_lines(), start=1):
        try:
            parse_request(line.encode("utf-8"), DEMO_MAX_TEXT_CHARS)
        except InvalidInput as exc:
            if exc.reason in {"invalid_json", "too_large"}:
                continue  # not JSON at all, or over a limit the deployment sets (not in the schema)
            assert _errors("input", json.loads(line)), f"samples.jsonl line {number} ({exc.reason})"
            rejected += 1
    assert rejected >= 3


GOOD_INPUTS: list[dict[str, Any]] = [
    {"id": "a", "text": "hello"},
    {"id": "a", "text": "hello", "kind": "prompt", "metadata": {"x": [1, {"y": None}]}},
    {"id": "a", "text": "I can't help", "kind": "response", "prompt": "how do I ...?"},
    {"id": "a", "text": "hello", "kind": None, "metadata": None},
    {"id": "a", "text": "hello", "future_field": {"anything": True}},
    {"id": "a", "text": "hello", "kind": "prompt", "prompt": 42},
    {"id": "x" * 512, "text": "t" * MAX_TEXT_CHARS},
]


@pytest.mark.parametrize("document", GOOD_INPUTS)
def test_valid_input_is_accepted_by_schema_and_parser(document: dict[str, Any]) -> None:
    assert _errors("input", document) == []
    parse_request(json.dumps(document).encode("utf-8"), MAX_TEXT_CHARS)


BAD_INPUTS: list[tuple[dict[str, Any] | list[Any], str]] = [
    ({"id": "a"}, "missing_field"),
    ({"text": "hello"}, "missing_field"),
    ({"id": "", "text": "hello"}, "missing_field"),
    ({"id": "  ", "text": "hello"}, "missing_field"),
    ({"id": "a", "text": "x", "kind": "response"}, "missing_field"),
    ({"id": "a", "text": "x", "kind": "response", "prompt": None}, "missing_field"),
    ({"id": 7, "text": "hello"}, "wrong_type"),
    ({"id": "a", "text": ["hello"]}, "wrong_type"),
    ({"id": "a", "text": "hello", "metadata": "user=1"}, "wrong_type"),
    ({"id": "a", "text": "x", "kind": "response", "prompt": 5}, "wrong_type"),
    ({"id": "a", "text": "hello", "kind": 1}, "wrong_type"),
    (["id", "text"], "wrong_type"),
    ({"id": "a", "text": "hello", "kind": "system"}, "invalid_value"),
    ({"id": "x" * 513, "text": "hello"}, "invalid_value"),
    ({"id": "a", "text": " \n\t "}, "empty_text"),
    ({"id": "a", "text": ""}, "empty_text"),
]


@pytest.mark.parametrize(("document", "reason"), BAD_INPUTS)
def test_invalid_input_is_rejected_by_schema_and_parser(document: Any, reason: str) -> None:
    assert _errors("input", document), "the schema accepted it"
    with pytest.raises(InvalidInput) as caught:
        parse_request(json.dumps(document).encode("utf-8"), MAX_TEXT_CHARS)
    assert caught.value.reason == reason


def test_empty_kind_is_rejected_by_the_parser_as_by_the_schema() -> None:
    # BUG worker/core/messages.py _parse_kind: `... or "prompt"` turns kind "" into a prompt.
    document = {"id": "a", "text": "hello", "kind": ""}
    assert _errors("input", document)
    with pytest.raises(InvalidInput) as caught:
        parse_request(json.dumps(document).encode("utf-8"), MAX_TEXT_CHARS)
    assert caught.value.reason == "invalid_value"


def test_empty_prompt_for_a_response_is_missing_field_as_reasons_documents() -> None:
    # BUG worker/core/messages.py parse_request: REASONS["missing_field"] says a prompt for kind=response may
    # not be "missing or empty", and the schema says so, but the parser accepts prompt "".
    document = {"id": "a", "text": "sure, here it is", "kind": "response", "prompt": ""}
    assert _errors("input", document)
    with pytest.raises(InvalidInput) as caught:
        parse_request(json.dumps(document).encode("utf-8"), MAX_TEXT_CHARS)
    assert caught.value.reason == "missing_field"


def test_the_package_ships_the_project_schemas_and_names_them() -> None:
    shipped = sorted(path.name.removesuffix(".schema.json") for path in (ROOT / "schemas").glob("*.json"))
    assert sorted(NAMES) == shipped
    for name in NAMES:
        on_disk = (ROOT / "schemas" / f"{name}.schema.json").read_text(encoding="utf-8")
        assert schema_text(name) == on_disk
    with pytest.raises(KeyError, match="no schema 'request'"):
        schema_text("request")


def test_a_provisional_verdict_from_the_code_matches_the_verdict_schema() -> None:
    provisional = ProvisionalVerdict(
        id="p1",
        action="block",
        model="Qwen/Qwen3Guard-Gen-8B",
        trace_id="ab" * 16,
        attempts=2,
        latency_ms=3.0,
        processed_at="2026-12-03T12:00:00.000Z",
        metadata={"tenant": "t"},
        content_sha256="cd" * 32,
    )
    document = json.loads(provisional.to_json())
    assert (
        document["provisional"] is True
        and document["label"] is None
        and document["reason"] == "guard_unavailable"
    )
    assert _errors("verdict", document) == []
    assert _errors("verdict", document | {"label": "safe"}) != []  # a provisional verdict names no label
    final = document | {"provisional": False, "label": "safe", "action": "allow"}
    del final["reason"]
    assert _errors("verdict", final) == []
    assert _errors("verdict", final | {"label": None}) != []  # a final verdict always has one
