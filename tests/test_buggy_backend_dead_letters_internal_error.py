"""An unexpected error on one message (a bug) dead-letters that message; the rest keep flowing."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, InProcessBackend, collect, publish, running_worker, wait_for_verdicts
from worker.core.guard_types import GuardRequest, GuardVerdict
from worker.failures.envelope import DeadLetterEnvelope

pytestmark = pytest.mark.integration


class BuggyBackend(InProcessBackend):
    """Answers every text, except that it trips over one of them with a plain Python error."""

    model = "buggy-test-backend"

    async def moderate(self, request: GuardRequest) -> GuardVerdict:
        if "trip" in request.text:
            raise ZeroDivisionError("division by zero")
        return GuardVerdict(label="safe", categories=(), refusal=None, model=self.model)


async def test_bug_on_one_message_dead_letters_it_as_internal_error_and_others_flow(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings()
    async with running_worker(settings, guard=BuggyBackend()):
        await publish(
            settings,
            [{"id": "bad", "text": "trip here"}] + [{"id": f"ok{i}", "text": f"fine {i}"} for i in range(20)],
        )
        await wait_for_verdicts(settings, [f"ok{i}" for i in range(20)], timeout_s=30)
        dead = await collect(settings, settings.dlq_topic, count=1, timeout_s=20)
    assert len(dead) == 1
    envelope = DeadLetterEnvelope.from_headers(dead[0].headers)
    assert envelope.error_reason == "internal_error"
    assert "ZeroDivisionError" in envelope.error_message
    assert json.loads(dead[0].value)["id"] == "bad"
