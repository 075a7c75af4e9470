"""parse_request under fuzzing (hypothesis): arbitrary bytes, arbitrary JSON documents and any text give a
request or an InvalidInput with a documented reason, never anything else; what is accepted can be written back."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.core.errors import InvalidInput
from worker.core.messages import ModerationRequest, parse_request
from worker.failures.envelope import REASONS


def _parse_or_reason(value: bytes | None) -> ModerationRequest | str:
    try:
        return parse_request(value, 50)
    except InvalidInput as exc:
        assert exc.reason in REASONS, exc.reason
        return exc.reason


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.binary(max_size=200)))
def test_arbitrary_bytes_give_a_request_or_a_documented_reason(value: bytes | None) -> None:
    outcome = _parse_or_reason(value)
    assert isinstance(outcome, ModerationRequest | str)


# Text with lone surrogates included: they become "\udxxx" escapes in the JSON.
any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=60)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    any_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(any_text | st.sampled_from(["id", "text"]), inner, max_size=4),
    ),
    max_leaves=12,
)
plain_text = st.text(max_size=60)
documents = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {
            "id": st.one_of(plain_text, any_text, json_values),
            "text": st.one_of(plain_text, any_text, json_values),
        },
        optional={
            "kind": st.one_of(st.sampled_from(["prompt", "response", "", None]), json_values),
            "prompt": st.one_of(plain_text, any_text, json_values),
            "metadata": st.one_of(st.dictionaries(any_text, json_values, max_size=3), json_values),
            "extra": json_values,
        },
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_arbitrary_json_documents_give_a_request_or_a_documented_reason(document: Any) -> None:
    outcome = _parse_or_reason(json.dumps(document).encode("utf-8"))
    if isinstance(outcome, ModerationRequest):
        assert isinstance(document, dict)
        assert outcome.id == document["id"]
        assert outcome.text == document["text"]
        assert outcome.text.strip()
        assert len(outcome.text) <= 50
        # What is accepted can always be written back as strict UTF-8 JSON.
        json.dumps(outcome.metadata, ensure_ascii=False, allow_nan=False).encode("utf-8")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_any_text_is_accepted_exactly_when_it_is_valid_non_blank_utf8_within_the_limit(text: str) -> None:
    outcome = _parse_or_reason(json.dumps({"id": "a", "text": text}).encode("ascii"))
    if not _encodable(text):
        assert outcome == "invalid_utf8"
    elif not text.strip():
        assert outcome == "empty_text"
    elif len(text) > 50:
        assert outcome == "too_large"
    else:
        assert outcome == ModerationRequest(id="a", text=text)
