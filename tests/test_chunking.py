"""Chunking long texts: chunks cover the text in order, fit the budget, overlap exactly; verdicts fold worst-first."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.guard_types import GuardRequest, GuardVerdict, Label
from worker.dev.sim.verdicts import estimate_prompt_tokens
from worker.guard.chat import MAX_TOKENS
from worker.processing.chunking import (
    MIN_CHUNK_CHARS,
    OVERHEAD_TOKENS,
    aggregate,
    chunk_chars_for,
    chunk_digest,
    overlap_for,
    requests_for,
    smaller,
    split_text,
)

# Words, white space of several kinds, CJK and characters outside the BMP (one code point, two UTF-16 units).
_TEXT = st.text(
    alphabet=st.sampled_from(["a", "b", "z", " ", "\n", "\t", "é", "漢", "😀", "𝄞"]), max_size=1500
)


@st.composite
def _budgets(draw: st.DrawFn) -> tuple[int, int]:
    max_chars = draw(st.integers(min_value=1, max_value=200))
    return max_chars, draw(st.integers(min_value=0, max_value=max_chars - 1))


def _spans(text: str, chunks: list[str], overlap: int) -> list[tuple[int, int]]:
    """Each chunk's (start, end) in ``text``, checking that it is exactly that slice."""
    spans: list[tuple[int, int]] = []
    start = 0
    for chunk in chunks:
        assert text[start : start + len(chunk)] == chunk
        spans.append((start, start + len(chunk)))
        start += len(chunk) - overlap
    return spans


@settings(max_examples=300, deadline=None)
@given(text=_TEXT, budget=_budgets())
def test_chunks_cover_the_text_in_order_within_the_budget(text: str, budget: tuple[int, int]) -> None:
    max_chars, overlap = budget
    chunks = split_text(text, max_chars=max_chars, overlap_chars=overlap)
    spans = _spans(text, chunks, overlap)
    assert spans[0][0] == 0
    assert spans[-1][1] == len(text)
    assert all(len(chunk) <= max_chars for chunk in chunks)
    if len(chunks) > 1:
        assert all(chunk for chunk in chunks)
        # Every chunk reaches past the previous one: no chunk is redundant, and the loop made progress.
        assert all(later[1] > earlier[1] for earlier, later in pairwise(spans))
        assert "".join([chunks[0], *(chunk[overlap:] for chunk in chunks[1:])]) == text
    for chunk in chunks:
        chunk.encode("utf-8")  # no half of a surrogate pair anywhere


@settings(max_examples=200, deadline=None)
@given(text=_TEXT, budget=_budgets())
def test_any_stretch_up_to_the_overlap_lies_whole_in_one_chunk(text: str, budget: tuple[int, int]) -> None:
    max_chars, overlap = budget
    spans = _spans(text, split_text(text, max_chars=max_chars, overlap_chars=overlap), overlap)
    length = min(overlap + 1, len(text))
    for first in range(len(text) - length + 1):
        assert any(start <= first and first + length <= end for start, end in spans), first


def test_a_text_that_fits_is_returned_as_is() -> None:
    assert split_text("short text", max_chars=10, overlap_chars=3) == ["short text"]
    assert split_text("", max_chars=10, overlap_chars=3) == [""]


def test_cuts_land_after_white_space_near_the_boundary() -> None:
    text = " ".join(f"word{i:03d}" for i in range(200))
    chunks = split_text(text, max_chars=100, overlap_chars=20)
    assert len(chunks) > 1
    assert all(chunk.endswith(" ") for chunk in chunks[:-1])
    # Moving the cut back costs at most a quarter of the step.
    assert all(len(chunk) > 100 - (100 - 20) // 4 for chunk in chunks[:-1])


def test_text_without_white_space_is_cut_at_the_hard_boundary() -> None:
    chunks = split_text("x" * 250, max_chars=100, overlap_chars=10)
    assert [len(chunk) for chunk in chunks] == [100, 100, 70]


@pytest.mark.parametrize(("max_chars", "overlap"), [(10, 10), (10, 11), (10, -1), (0, 0)])
def test_an_overlap_that_could_not_progress_is_refused(max_chars: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        split_text("x" * 50, max_chars=max_chars, overlap_chars=overlap)


def test_chunk_size_from_the_model_window() -> None:
    assert chunk_chars_for(None, default_chars=100_000) == 100_000
    assert chunk_chars_for(32768, default_chars=100_000) == (32768 - OVERHEAD_TOKENS) * 2
    assert chunk_chars_for(600, default_chars=100_000) == MIN_CHUNK_CHARS
    with pytest.raises(ValueError):
        chunk_chars_for(0, default_chars=100)
    with pytest.raises(ValueError):
        chunk_chars_for(None, default_chars=0)


@pytest.mark.parametrize("max_model_len", [2048, 8192, 32768, 131072])
def test_a_full_chunk_fits_the_simulated_window(max_model_len: int) -> None:
    max_chars = chunk_chars_for(max_model_len, default_chars=1)
    tokens = estimate_prompt_tokens([{"role": "user", "content": "x" * max_chars}])
    assert tokens + MAX_TOKENS <= max_model_len


def test_smaller_halves_until_the_floor() -> None:
    assert smaller(4096) == 2048
    assert smaller(2 * MIN_CHUNK_CHARS) == MIN_CHUNK_CHARS
    assert smaller(2 * MIN_CHUNK_CHARS - 1) is None
    sizes = [64512]
    while (following := smaller(sizes[-1])) is not None:
        sizes.append(following)
    assert sizes == [64512, 32256, 16128, 8064, 4032, 2016, 1008]


@pytest.mark.parametrize("max_chars", [1, 7, 8, 100, 64512, 10**6])
def test_default_overlap_is_always_usable(max_chars: int) -> None:
    assert 0 <= overlap_for(max_chars) < max_chars


def test_a_prompt_that_fits_is_one_unchanged_request() -> None:
    request = GuardRequest(text="hello there")
    assert requests_for(request, 100, 10) == [request]


def test_a_long_prompt_is_split_into_prompt_requests() -> None:
    request = GuardRequest(text="lorem ipsum " * 100)
    parts = requests_for(request, 100, 10)
    assert len(parts) > 1
    assert all(part.kind == "prompt" and part.prompt is None and len(part.text) <= 100 for part in parts)
    assert [part.text for part in parts] == split_text(request.text, max_chars=100, overlap_chars=10)


def test_a_long_response_pairs_every_chunk_with_its_prompt() -> None:
    request = GuardRequest(text="an answer " * 100, kind="response", prompt="a question?")
    parts = requests_for(request, 100, 10)
    assert len(parts) > 1
    assert all(part.kind == "response" and part.prompt == "a question?" for part in parts)
    assert all(len(part.text) + len("a question?") <= 100 for part in parts)
    assert "".join([parts[0].text, *(part.text[10:] for part in parts[1:])]) == request.text


def test_a_long_prompt_of_a_response_keeps_only_its_end() -> None:
    prompt = "".join(f"{i % 10}" for i in range(1000))
    request = GuardRequest(text="an answer " * 100, kind="response", prompt=prompt)
    parts = requests_for(request, 200, 20)
    assert all(part.prompt == prompt[-50:] for part in parts)
    assert all(len(part.text) + 50 <= 200 for part in parts)


def test_a_short_response_to_a_huge_prompt_is_one_request_with_the_prompt_cut() -> None:
    request = GuardRequest(text="Sure.", kind="response", prompt="q" * 10_000)
    assert requests_for(request, 400, 40) == [GuardRequest(text="Sure.", kind="response", prompt="q" * 100)]


@settings(max_examples=200, deadline=None)
@given(text=_TEXT.filter(bool), prompt=_TEXT.filter(bool), max_chars=st.integers(1, 300))
def test_every_response_request_fits_the_budget(text: str, prompt: str, max_chars: int) -> None:
    request = GuardRequest(text=text, kind="response", prompt=prompt)
    parts = requests_for(request, max_chars, overlap_for(max_chars))
    if len(parts) > 1 or parts[0] != request:
        assert all(len(part.text) + len(part.prompt or "") <= max_chars for part in parts)
        assert all(prompt.endswith(part.prompt or "") for part in parts)
    assert parts[0].text == text[: len(parts[0].text)]
    assert text.endswith(parts[-1].text)


def test_an_unusable_overlap_is_refused_by_requests_for() -> None:
    with pytest.raises(ValueError):
        requests_for(GuardRequest(text="x" * 500), 100, 100)


def _verdict(label: Label, *categories: str, refusal: bool | None = None) -> GuardVerdict:
    return GuardVerdict(label=label, categories=categories, refusal=refusal, model="m")


def test_one_unsafe_chunk_makes_the_text_unsafe() -> None:
    verdicts = [_verdict("safe"), _verdict("controversial", "PII"), _verdict("unsafe", "Violent")]
    assert aggregate(verdicts, "prompt").label == "unsafe"


def test_controversial_beats_safe_and_all_safe_is_safe() -> None:
    assert aggregate([_verdict("safe"), _verdict("controversial"), _verdict("safe")], "prompt").label == (
        "controversial"
    )
    assert aggregate([_verdict("safe"), _verdict("safe")], "prompt") == _verdict("safe")


def test_categories_are_united_in_first_seen_order() -> None:
    verdicts = [
        _verdict("unsafe", "Suicide & Self-Harm", "Violent"),
        _verdict("safe"),
        _verdict("unsafe", "Violent", "Non-violent Illegal Acts"),
        _verdict("controversial", "Suicide & Self-Harm"),
    ]
    assert aggregate(verdicts, "prompt").categories == (
        "Suicide & Self-Harm",
        "Violent",
        "Non-violent Illegal Acts",
    )


def test_refusal_comes_from_the_last_chunk_of_a_response_and_is_none_for_a_prompt() -> None:
    verdicts = [_verdict("safe", refusal=False), _verdict("safe", refusal=True)]
    assert aggregate(verdicts, "response").refusal is True
    assert aggregate(list(reversed(verdicts)), "response").refusal is False
    assert aggregate(verdicts, "prompt").refusal is None


def test_aggregate_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError):
        aggregate([], "prompt")


def test_chunk_digest_depends_on_model_and_exact_content_only() -> None:
    part = GuardRequest(text="abc", kind="response", prompt="q")
    assert chunk_digest("m", part) == chunk_digest("m", GuardRequest(text="abc", kind="response", prompt="q"))
    others = [
        chunk_digest("m2", part),
        chunk_digest("m", GuardRequest(text="abc", kind="prompt")),
        chunk_digest("m", GuardRequest(text="abcd", kind="response", prompt="q")),
        chunk_digest("m", GuardRequest(text="abc", kind="response", prompt="q ")),
    ]
    assert len({chunk_digest("m", part), *others}) == 5


@settings(max_examples=200, deadline=None)
@given(
    a=st.tuples(st.text(max_size=5), st.text(max_size=5)),
    b=st.tuples(st.text(max_size=5), st.text(max_size=5)),
)
def test_chunk_digests_of_different_splits_never_collide(a: tuple[str, str], b: tuple[str, str]) -> None:
    # Prompt and text are encoded apart: moving characters from one to the other changes the digest.
    first = chunk_digest("m", GuardRequest(text=a[1], kind="response", prompt=a[0]))
    second = chunk_digest("m", GuardRequest(text=b[1], kind="response", prompt=b[0]))
    assert (first == second) == (a == b)
