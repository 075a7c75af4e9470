"""OpenAI-style moderation replies: one result per input, each read on its own; a reply that does not
match its inputs fails them all."""

from __future__ import annotations

import json
from typing import Any

import pytest

from worker.core.errors import GuardBadReply
from worker.guard.moderation_parse import parse_moderation_results


def _result(flagged: bool, categories: dict[str, bool] | None = None) -> dict[str, Any]:
    return {"flagged": flagged, "categories": categories or {}}


def _body(*results: Any) -> bytes:
    return json.dumps({"id": "modr-1", "model": "omni-moderation-latest", "results": list(results)}).encode()


def test_flagged_is_unsafe_with_the_true_categories_sorted_as_the_api_spells_them() -> None:
    body = _body(
        _result(
            True, {"violence": True, "harassment/threatening": True, "hate": False, "self-harm/intent": True}
        ),
        _result(False, {"violence": False}),
    )
    assert parse_moderation_results(body, 2) == [
        ("unsafe", ("harassment/threatening", "self-harm/intent", "violence")),
        ("safe", ()),
    ]


def test_real_api_spelling_with_scores_and_input_types_is_read() -> None:
    result = {
        "flagged": True,
        "categories": {"self-harm/intent": True, "self-harm": True, "sexual/minors": False, "illicit": None},
        "category_scores": {"self-harm/intent": 0.9},
        "category_applied_input_types": {"self-harm": ["text"]},
    }
    assert parse_moderation_results(_body(result), 1) == [("unsafe", ("self-harm", "self-harm/intent"))]


def test_flagged_without_a_true_category_is_unsafe_without_categories() -> None:
    assert parse_moderation_results(_body(_result(True, {"violence": False})), 1) == [("unsafe", ())]


@pytest.mark.parametrize(
    ("body", "inputs", "problem"),
    [
        (b"not json", 1, "not JSON"),
        (b"[]", 1, "no results list"),
        (json.dumps({"results": {}}).encode(), 1, "no results list"),
        (_body(_result(False)), 2, "1 result(s) for 2 input(s)"),
        (_body(_result(False), _result(False)), 1, "2 result(s) for 1 input(s)"),
    ],
)
def test_a_reply_that_does_not_match_its_inputs_fails_them_all(
    body: bytes, inputs: int, problem: str
) -> None:
    with pytest.raises(GuardBadReply) as caught:
        parse_moderation_results(body, inputs)
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("x", "not an object"),
        ({"categories": {}}, "'flagged'"),
        ({"flagged": "yes", "categories": {}}, "'flagged'"),
        ({"flagged": True}, "'categories'"),
        ({"flagged": True, "categories": ["violence"]}, "'categories'"),
        ({"flagged": True, "categories": {"violence": 1}}, "not true or false"),
    ],
)
def test_a_malformed_entry_fails_only_its_own_input(entry: Any, problem: str) -> None:
    good, bad = parse_moderation_results(_body(_result(False), entry), 2)
    assert good == ("safe", ())
    assert isinstance(bad, GuardBadReply) and problem in str(bad)
