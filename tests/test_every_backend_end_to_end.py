"""Each guard backend against the simulator speaking its wire format: 1,000 messages → 1,000 correct
verdicts (label, categories, refusal, action) in Redis and on the verdict topic; faults classified like
Qwen3Guard's; the batching backend sends fewer requests than messages."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, distinct_verdict_ids, publish, running_worker, wait_for_verdicts
from worker.failures.envelope import DeadLetterEnvelope

pytestmark = pytest.mark.integration

BACKENDS = ["qwen3guard", "llamaguard", "openai-moderation"]
OVERRIDES = {
    "qwen3guard": "PII=review",
    "llamaguard": "Privacy=review",
    "openai-moderation": "illicit=review",
}

# (kind, prompt, text) → per backend: (label, categories, refusal, action) under OVERRIDES.
CASES: list[tuple[dict[str, str], dict[str, tuple[str, list[str], bool | None, str]]]] = [
    (
        {"text": "what is the capital of France"},
        {
            "qwen3guard": ("safe", [], None, "allow"),
            "llamaguard": ("safe", [], None, "allow"),
            "openai-moderation": ("safe", [], None, "allow"),
        },
    ),
    (
        {"text": "how do I kill my neighbour"},
        {
            "qwen3guard": ("unsafe", ["Violent"], None, "block"),
            "llamaguard": ("unsafe", ["Violent Crimes"], None, "block"),
            "openai-moderation": ("unsafe", ["violence"], None, "block"),
        },
    ),
    (
        {"text": "give me her credit card number"},
        {
            "qwen3guard": ("unsafe", ["PII"], None, "review"),
            "llamaguard": ("unsafe", ["Privacy"], None, "review"),
            "openai-moderation": ("safe", [], None, "allow"),
        },
    ),
    (
        {"text": "who should win the election"},
        {
            "qwen3guard": ("controversial", ["Politically Sensitive Topics"], None, "review"),
            "llamaguard": ("unsafe", ["Elections"], None, "block"),
            "openai-moderation": ("safe", [], None, "allow"),
        },
    ),
    (
        {
            "kind": "response",
            "prompt": "how do I get into a bank vault",
            "text": "I can't help with hacking banks",
        },
        {
            "qwen3guard": ("unsafe", ["Non-violent Illegal Acts"], True, "block"),
            "llamaguard": ("unsafe", ["Non-Violent Crimes"], None, "block"),
            "openai-moderation": ("unsafe", ["illicit"], None, "review"),
        },
    ),
    (
        {"text": "I think of suicide, or to kill someone and steal a car"},
        {
            "qwen3guard": (
                "unsafe",
                ["Violent", "Non-violent Illegal Acts", "Suicide & Self-Harm"],
                None,
                "block",
            ),
            "llamaguard": (
                "unsafe",
                ["Violent Crimes", "Non-Violent Crimes", "Suicide & Self-Harm"],
                None,
                "block",
            ),
            "openai-moderation": (
                "unsafe",
                ["illicit", "self-harm", "self-harm/intent", "violence"],
                None,
                "block",
            ),
        },
    ),
]
MESSAGES = 1000


def _documents() -> list[dict[str, Any]]:
    return [
        {"id": f"m{i}", **CASES[i % len(CASES)][0], "text": f"{CASES[i % len(CASES)][0]['text']} #{i}"}
        for i in range(MESSAGES)
    ]


def _expected(backend: str, i: int) -> dict[str, Any]:
    label, categories, refusal, action = CASES[i % len(CASES)][1][backend]
    return {"label": label, "categories": categories, "refusal": refusal, "action": action}


def _seen(verdict: dict[str, Any]) -> dict[str, Any]:
    return {key: verdict[key] for key in ("label", "categories", "refusal", "action")}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_thousand_messages_get_a_thousand_correct_verdicts(
    make_settings: SettingsFactory, guard_sim: GuardSim, backend: str
) -> None:
    settings = make_settings(guard_backend=backend, policy_categories=OVERRIDES[backend], concurrency="64")
    documents = _documents()
    async with running_worker(settings):
        await publish(settings, documents)
        stored = await wait_for_verdicts(settings, [d["id"] for d in documents], timeout_s=120)
        published = await distinct_verdict_ids(settings, expected=MESSAGES, timeout_s=60)
    assert len(stored) == len(published) == MESSAGES
    for i in range(MESSAGES):
        assert _seen(stored[f"m{i}"]) == _expected(backend, i), f"m{i}"
        assert _seen(published[f"m{i}"]) == _expected(backend, i), f"m{i}"
    assert {v["model"] for v in stored.values()} == {settings.guard_model}
    requests = (await guard_sim.stats())["requests"]
    if backend == "openai-moderation":
        assert requests < MESSAGES / 2, requests  # batched: far fewer requests than messages
    else:
        assert requests == MESSAGES


@pytest.mark.parametrize("backend", ["llamaguard", "openai-moderation"])
async def test_faults_of_each_wire_are_classified_like_qwen3guard_s(
    make_settings: SettingsFactory, guard_sim: GuardSim, backend: str
) -> None:
    # One text per request: each message meets its own fault (a batch shares the request's fault).
    # Exact attempt counts need a breaker that stays closed (several texts fail here at once, which
    # opens the default one, and a message held by an open circuit gets a fresh budget).
    settings = make_settings(
        guard_backend=backend, guard_attempts=3, retry_schedule="1s", guard_batch_max=1, breaker_failures=50
    )
    recovering = [
        {"id": "two-503s", "text": "recover [[sim:503x2]]"},
        {"id": "one-reset", "text": "recover [[sim:resetx1]]"},
        {"id": "one-garbage", "text": "recover [[sim:garbagex1]]"},
        {"id": "one-429", "text": "recover [[sim:429x1]]"},
    ]
    failing = [
        {"id": "always-503", "text": "never [[sim:503x50]]"},
        {"id": "rejected", "text": "bad request [[sim:400]]"},
        {"id": "always-garbage", "text": "nonsense [[sim:garbage]]"},
    ]
    async with running_worker(settings):
        await publish(settings, recovering + failing)
        stored = await wait_for_verdicts(settings, [d["id"] for d in recovering], timeout_s=60)
        dead = await collect(settings, settings.dlq_topic, count=len(failing), timeout_s=60)
    assert {key: stored[key]["attempts"] for key in stored} == {
        "two-503s": 3,
        "one-reset": 2,
        "one-garbage": 2,
        "one-429": 2,
    }
    by_id = {json.loads(r.value)["id"]: DeadLetterEnvelope.from_headers(r.headers) for r in dead}
    assert (by_id["always-503"].error_reason, by_id["always-503"].error_class) == (
        "retries_exhausted",
        "GuardUnavailable",
    )
    assert by_id["always-503"].attempts == 6
    assert (by_id["rejected"].error_reason, by_id["rejected"].attempts) == ("guard_rejected", 1)
    assert by_id["always-garbage"].error_class == "GuardBadReply"
    assert await guard_sim.calls_for("bad request [[sim:400]]") == 1


async def test_one_bad_result_in_a_batch_does_not_fail_the_others(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings(guard_backend="openai-moderation", guard_batch_wait_ms="200", concurrency="4")
    documents = [{"id": f"ok{i}", "text": f"fine text {i}"} for i in range(20)]
    documents.append({"id": "odd", "text": "odd one [[sim:garbagex1]]"})
    async with running_worker(settings):
        await publish(settings, documents)
        stored = await wait_for_verdicts(settings, [d["id"] for d in documents], timeout_s=60)
    assert all(stored[f"ok{i}"]["attempts"] == 1 for i in range(20))
    assert stored["odd"]["attempts"] == 2  # its own retry, in a later batch
    stats = await guard_sim.stats()
    assert stats["requests"] < len(documents)


async def test_a_batch_refused_for_one_text_is_sent_again_text_by_text(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings(guard_backend="openai-moderation", guard_batch_wait_ms="200", concurrency="1")
    documents = [{"id": f"ok{i}", "text": f"fine text {i}"} for i in range(10)]
    documents.append({"id": "refused", "text": "refused [[sim:400]]"})
    async with running_worker(settings):
        await publish(settings, documents)
        stored = await wait_for_verdicts(settings, [f"ok{i}" for i in range(10)], timeout_s=60)
        dead = await collect(settings, settings.dlq_topic, count=1, timeout_s=60)
    assert all(verdict["attempts"] == 1 for verdict in stored.values())
    envelope = DeadLetterEnvelope.from_headers(dead[0].headers)
    assert (json.loads(dead[0].value)["id"], envelope.error_reason) == ("refused", "guard_rejected")
