"""GUARDQ_ALERT_WEBHOOK_URL: breaker events reach a local receiver as JSON; a receiver that fails or hangs
is logged and never holds anything up."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from tests.helpers import wait_until
from tests.test_breaker import _to_half_open
from worker.ops.alerts import AlertWebhook
from worker.processing.breaker import BreakerPolicy, CircuitBreaker

SECRET_PATH = "/services/T000/B000/s3cr3t"


class Receiver:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        self.hang = asyncio.Event()  # set: answer; clear: hang
        self.hang.set()

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        await self.hang.wait()
        return web.Response(status=self.status, text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    state = Receiver()
    app = web.Application()
    app.router.add_post(SECRET_PATH, state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield state, f"http://127.0.0.1:{port}{SECRET_PATH}"
    state.hang.set()
    await runner.cleanup()


POLICY = BreakerPolicy(cooldown_initial_s=0.01, cooldown_max_s=0.05, trial_calls=1, fallback_after_s=0.1)


async def test_open_fallback_and_back_each_post_one_json_document(receiver: tuple[Receiver, str]) -> None:
    state, url = receiver
    webhook = AlertWebhook(url, worker="host-a:42", counts=lambda: {"parked": 3}, quiet_s=0)
    breaker = CircuitBreaker(POLICY)
    breaker.watch(webhook.notify)
    for _ in range(POLICY.consecutive_failures):
        breaker.record(success=False, error=ConnectionError("refused"))

    async def fallback_posted() -> bool:
        return len(state.bodies) >= 2

    await wait_until(fallback_posted, timeout_s=5, what="the open and fallback alerts")
    await _to_half_open(breaker)
    breaker.record(success=True)

    async def back_posted() -> bool:
        return len(state.bodies) >= 3

    await wait_until(back_posted, timeout_s=5, what="the back alert")
    await webhook.close()
    opened, fallback, back = state.bodies
    assert [b["state"] for b in state.bodies] == ["open", "fallback", "back"]
    assert opened["text"].startswith("guardq host-a:42: guard circuit OPEN") and "refused" in opened["reason"]
    assert (
        opened["worker"] == "host-a:42" and opened["counts"] == {"parked": 3} and opened["source"] == "guardq"
    )
    assert fallback["since"].endswith("Z") and "PROVISIONAL" in fallback["text"]
    assert back["details"]["fallback"] is True and webhook.sent == 3 and webhook.failed == 0


async def test_a_hanging_receiver_never_holds_up_the_breaker(
    receiver: tuple[Receiver, str], caplog: pytest.LogCaptureFixture
) -> None:
    state, url = receiver
    state.hang.clear()
    webhook = AlertWebhook(url, worker="w", timeout_s=0.3)
    breaker = CircuitBreaker(POLICY)
    breaker.watch(webhook.notify)
    started = time.monotonic()
    for _ in range(POLICY.consecutive_failures):
        breaker.record(success=False)
    assert time.monotonic() - started < 0.05 and breaker.is_open  # notify returned at once

    async def timed_out() -> bool:
        return webhook.failed >= 1

    with caplog.at_level(logging.WARNING, logger="worker.ops.alerts"):
        await wait_until(timed_out, timeout_s=5, what="the hanging post to time out")
    await webhook.close()
    assert "TimeoutError" in caplog.text and "s3cr3t" not in caplog.text


async def test_a_failing_receiver_is_logged_without_its_url(
    receiver: tuple[Receiver, str], caplog: pytest.LogCaptureFixture
) -> None:
    state, url = receiver
    state.status = 500
    webhook = AlertWebhook(url, worker="w")
    with caplog.at_level(logging.WARNING, logger="worker.ops.alerts"):
        webhook.notify("open", {"reason": "test"})
        await wait_until(lambda: _failed(webhook), timeout_s=5, what="the failed post")
    await webhook.close()
    assert "HTTP 500" in caplog.text and "s3cr3t" not in caplog.text
    unreachable = AlertWebhook("http://127.0.0.1:9/hook", worker="w")
    unreachable.notify("back", {})
    await wait_until(lambda: _failed(unreachable), timeout_s=5, what="the refused post")
    await unreachable.close()


async def _failed(webhook: AlertWebhook) -> bool:
    return webhook.failed >= 1


async def test_too_many_posts_under_way_drop_the_newest(receiver: tuple[Receiver, str]) -> None:
    state, url = receiver
    state.hang.clear()
    webhook = AlertWebhook(url, worker="w", timeout_s=2, quiet_s=0)
    for _ in range(20):
        webhook.notify("open", {})
    await wait_until(lambda: _received(state, 8), timeout_s=5, what="eight posts")
    await asyncio.sleep(0.1)
    assert len(state.bodies) == 8
    state.hang.set()
    await webhook.close()


async def _received(state: Receiver, count: int) -> bool:
    return len(state.bodies) >= count


async def test_a_flapping_guard_does_not_flood_the_receiver(receiver: tuple[Receiver, str]) -> None:
    state, url = receiver
    webhook = AlertWebhook(url, worker="w", quiet_s=0.3)
    for _ in range(10):
        webhook.notify("open", {"reason": "flap"})
        webhook.notify("back", {"outage_s": 0.1})
    webhook.notify("fallback", {"since_s": 60})
    webhook.notify("fallback", {"since_s": 120})
    await wait_until(lambda: _received(state, 4), timeout_s=5, what="four posts")
    await asyncio.sleep(0.5)
    await webhook.close()
    # The first at once, fallbacks at once, and the latest of the rest when the quiet time was over.
    assert [body["state"] for body in state.bodies] == ["open", "fallback", "fallback", "back"]


async def test_the_receiver_always_hears_the_last_state(receiver: tuple[Receiver, str]) -> None:
    state, url = receiver
    webhook = AlertWebhook(url, worker="w", quiet_s=60)
    webhook.notify("open", {})
    webhook.notify("back", {})
    webhook.notify("open", {})  # still down: the receiver must not be left believing "back"
    await webhook.close()  # a waiting event is posted on close, unless the receiver heard it last
    await wait_until(lambda: _received(state, 1), timeout_s=5, what="a post")
    assert [body["state"] for body in state.bodies] == ["open"]
    webhook = AlertWebhook(url, worker="w", quiet_s=60)
    webhook.notify("open", {})
    webhook.notify("back", {})  # the guard came back within the minute
    await webhook.close()
    await wait_until(lambda: _received(state, 3), timeout_s=5, what="three posts")
    assert [body["state"] for body in state.bodies][-2:] == ["open", "back"]
