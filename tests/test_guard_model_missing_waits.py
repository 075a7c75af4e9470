"""A guard that stops serving the model (a vLLM reloading it, a gateway between deployments) pauses the
worker instead of stopping it; a guard still loading at start-up is waited for."""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, publish, running_worker, wait_for_verdicts, wait_until
from tests.test_alert_webhook import Receiver, receiver
from worker.app import Worker
from worker.processing.breaker import BreakerState

pytestmark = pytest.mark.integration

__all__ = ["receiver"]  # the fixture, used by name


async def _status(worker: Worker, path: str) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{worker.http_port}{path}") as reply,
    ):
        return reply.status, await reply.json(content_type=None)


async def test_the_model_disappearing_mid_run_pauses_and_the_worker_goes_on_when_it_is_back(
    make_settings: SettingsFactory, guard_sim: GuardSim, receiver: tuple[Receiver, str]
) -> None:
    alerts, url = receiver
    settings = make_settings(
        breaker_open_s=0.5, guard_backoff="100ms,300ms", heartbeat_s=0.5, alert_webhook_url=url
    )
    ids = [f"m{i}" for i in range(60)]
    async with running_worker(settings) as worker:
        await publish(settings, ({"id": i, "text": f"before {i}"} for i in ids[:20]))
        await wait_for_verdicts(settings, ids[:20], timeout_s=30)
        await guard_sim.configure(model="Qwen/Qwen3Guard-Gen-4B")  # our model is gone: listed no more, 404s
        await publish(settings, ({"id": i, "text": f"during {i}"} for i in ids[20:]))

        async def paused() -> bool:
            return (
                worker.breaker.state is BreakerState.OPEN
                and worker.fetch_loop is not None
                and worker.fetch_loop.paused
            )

        await wait_until(paused, timeout_s=30, what="the circuit to open and consumption to pause")
        assert (await _status(worker, "/readyz"))[0] == 503
        _, state = await _status(worker, "/status")
        assert "not served" in str(state["outage"]) or "404" in str(state["outage"])
        await guard_sim.configure(model="Qwen/Qwen3Guard-Gen-8B")  # back
        stored = await wait_for_verdicts(settings, ids, timeout_s=60)
        assert len(stored) == len(ids)
        assert await collect(settings, settings.dlq_topic, count=1, timeout_s=2) == []
    states = [body["state"] for body in alerts.bodies]
    assert states[0] == "open" and "back" in states, states  # the webhook heard both


async def test_a_guard_still_loading_at_start_up_is_waited_for(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings(breaker_open_s=0.5)
    await guard_sim.configure(loading=True)
    try:
        async with running_worker(settings) as worker:
            await publish(settings, [{"id": "early", "text": "published while the guard loads"}])

            async def not_ready() -> bool:
                return (await _status(worker, "/readyz"))[0] == 503

            await wait_until(not_ready, timeout_s=10, what="readiness false while the guard loads")
            assert worker.breaker.is_open
            await guard_sim.configure(loading=False)  # the model appears
            await wait_for_verdicts(settings, ["early"], timeout_s=30)

            async def ready() -> bool:
                return (await _status(worker, "/readyz"))[0] == 200

            await wait_until(ready, timeout_s=15, what="readiness once the model is served")
    finally:
        await guard_sim.configure(loading=False)
