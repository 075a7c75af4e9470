"""The simulator serves every backend's wire format: Llama Guard on chat completions (by model) and
OpenAI-style /v1/moderations, with the same faults; ``flip_share`` makes a guard that disagrees."""

from __future__ import annotations

import pytest

from tests.simclient import MakeClient, make_client
from worker.core.taxonomies import OPENAI_MODERATION_CATEGORIES
from worker.dev.sim.verdicts import is_flipped, judge, llamaguard_reply

pytestmark = pytest.mark.integration

__all__ = ["make_client"]

LLAMA = "meta-llama/Llama-Guard-4-12B"


async def _llama(client: object, content: str) -> str:
    resp = await client.post(  # type: ignore[attr-defined]
        "/v1/chat/completions", json={"model": LLAMA, "messages": [{"role": "user", "content": content}]}
    )
    assert resp.status == 200
    body = await resp.json()
    return str(body["choices"][0]["message"]["content"])


async def test_llama_guard_model_answers_safe_or_unsafe_with_codes_in_order(make_client: MakeClient) -> None:
    client = await make_client()
    assert await _llama(client, "what is the capital of France?") == "safe"
    assert await _llama(client, "how to kill someone and steal their password") == "unsafe\nS1,S2,S7"
    assert await _llama(client, "who will win the election") == "unsafe\nS13"


async def test_moderations_answer_one_result_per_input_in_order(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.post(
        "/v1/moderations", json={"model": "omni-moderation-latest", "input": ["hello", "I will kill you"]}
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["id"].startswith("modr-") and body["model"] == "omni-moderation-latest"
    safe, violent = body["results"]
    assert safe["flagged"] is False and not any(safe["categories"].values())
    assert violent["flagged"] is True
    assert [key for key, value in violent["categories"].items() if value] == ["violence"]
    assert set(violent["categories"]) == set(OPENAI_MODERATION_CATEGORIES)
    stats = await (await client.get("/sim/stats?brief=1")).json()
    assert (stats["requests"], stats["verdicts"]) == (1, 2)


async def test_a_single_string_input_and_text_parts_are_accepted(make_client: MakeClient) -> None:
    client = await make_client()
    one = await (await client.post("/v1/moderations", json={"input": "hello"})).json()
    parts = await (
        await client.post("/v1/moderations", json={"input": [{"type": "text", "text": "hi"}]})
    ).json()
    assert len(one["results"]) == len(parts["results"]) == 1


@pytest.mark.parametrize("body", [{}, {"input": []}, {"input": [1]}, {"input": 5}])
async def test_a_malformed_moderation_request_is_400(make_client: MakeClient, body: object) -> None:
    client = await make_client()
    assert (await client.post("/v1/moderations", json=body)).status == 400


async def test_an_unknown_moderation_model_is_404(make_client: MakeClient) -> None:
    client = await make_client()
    assert (await client.post("/v1/moderations", json={"model": "x", "input": ["a"]})).status == 404


async def test_moderation_faults_fail_the_request_or_only_their_input(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.post("/v1/moderations", json={"input": ["fine", "down [[sim:503x1]]"]})
    assert resp.status == 503
    resp = await client.post("/v1/moderations", json={"input": ["fine", "odd [[sim:garbage]]"]})
    fine, odd = (await resp.json())["results"]
    assert fine["flagged"] is False and odd["flagged"] == "maybe"
    resp = await client.post("/v1/moderations", json={"input": ["fine", "lost [[sim:echo]]"]})
    assert len((await resp.json())["results"]) == 1


def test_flip_share_turns_over_that_share_of_texts_the_same_way_every_time() -> None:
    texts = [f"ordinary text number {i}" for i in range(4000)]
    flipped = [text for text in texts if is_flipped(text, 0.1)]
    assert 0.08 < len(flipped) / len(texts) < 0.12
    assert flipped == [text for text in texts if is_flipped(text, 0.1)]
    assert judge(flipped[0], response=False, flip_share=0.1)[0] == "Unsafe"
    assert judge(flipped[0], response=False)[0] == "Safe"
    assert llamaguard_reply([{"role": "user", "content": flipped[0]}], 0.1) == "unsafe\nS2"


async def test_flip_share_is_a_live_knob(make_client: MakeClient) -> None:
    client = await make_client()
    assert (await client.post("/sim/config", json={"flip_share": 1.0})).status == 200
    assert await _llama(client, "what is the capital of France?") == "unsafe\nS2"
    assert (await client.post("/sim/config", json={"flip_share": 2})).status == 400
