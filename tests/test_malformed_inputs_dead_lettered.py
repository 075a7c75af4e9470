"""Bad input is dead-lettered at once with its reason, bytes unchanged, while good messages keep flowing."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, publish_raw, running_worker, schema_errors, wait_for_verdicts
from worker.failures.envelope import DeadLetterEnvelope
from worker.kafka.reading import render

pytestmark = pytest.mark.integration

BAD: dict[bytes, tuple[bytes, str]] = {
    b"not-json": (b"this is not json", "invalid_json"),
    b"bad-utf8": (b'{"id": "u", "text": "caf\xc3\x28"}', "invalid_utf8"),
    b"surrogate": (b'{"id": "s", "text": "\\ud800 lone"}', "invalid_utf8"),
    b"no-id": (b'{"text": "hello"}', "missing_field"),
    b"no-text": (b'{"id": "nt"}', "missing_field"),
    b"int-id": (b'{"id": 7, "text": "hello"}', "wrong_type"),
    b"array": (b"[1, 2, 3]", "wrong_type"),
    b"empty": (b'{"id": "e", "text": "  \\n "}', "empty_text"),
    b"too-big": (json.dumps({"id": "big", "text": "x" * 5001}).encode(), "too_large"),
    b"response-no-prompt": (b'{"id": "r", "text": "sure", "kind": "response"}', "missing_field"),
    b"bad-kind": (b'{"id": "k", "text": "hi", "kind": "poem"}', "invalid_value"),
    b"nan": (b'{"id": "n", "text": "hi", "metadata": {"x": NaN}}', "invalid_json"),
}


async def test_malformed_inputs_go_to_dead_letters_with_reasons_while_good_ones_flow(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings(max_text_chars=5000)
    good = [(f"g{i}".encode(), json.dumps({"id": f"g{i}", "text": f"fine {i}"}).encode()) for i in range(40)]
    mixed: list[tuple[bytes | None, bytes]] = []
    for index, (key, (value, _)) in enumerate(BAD.items()):
        mixed += [*good[index * 3 : index * 3 + 3], (key, value)]
    mixed += good[len(BAD) * 3 :]
    async with running_worker(settings):
        await publish_raw(settings, mixed)
        await wait_for_verdicts(settings, [f"g{i}" for i in range(40)], timeout_s=60)
        dead = await collect(settings, settings.dlq_topic, count=len(BAD), timeout_s=30)
    assert len(dead) == len(BAD)
    for record in dead:
        value, reason = BAD[record.key]
        envelope = DeadLetterEnvelope.from_headers(record.headers)
        assert record.value == value, "the dead letter must keep the original bytes"
        assert envelope.error_reason == reason, record.key
        assert envelope.original_topic == settings.input_topic
        assert envelope.attempts == 0
        assert envelope.replay_count == 0
        assert envelope.traceparent is not None
        assert "\n" not in envelope.error_message
        assert schema_errors("deadletter", json.loads(render(record, value_only=False))) == []
    assert (await guard_sim.stats())["requests"] == 40
