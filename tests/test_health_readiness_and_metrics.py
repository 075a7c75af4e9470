"""The worker's HTTP server: /healthz, /readyz, /metrics and /status tell the truth while it runs, while
the guard is down (circuit open: not ready), while Redis is cut off (not ready), and after both return;
`guardq status` shows the same with the group's lag per partition."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlparse

import aiohttp
import pytest

from tests.conftest import SettingsFactory
from tests.faultproxy import FaultProxy
from tests.helpers import (
    GuardSim,
    publish,
    publish_raw,
    run_guardq,
    running_worker,
    wait_for_verdicts,
    wait_until,
)
from worker.app import Worker

pytestmark = pytest.mark.integration


async def _get(worker: Worker, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{worker.http_port}{path}") as reply,
    ):
        return reply.status, await reply.text()


def _sample(metrics: str, name: str) -> float:
    """The value of one exposition line ``name value`` (name includes its labels)."""
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_health_ready_metrics_and_status_while_moderating(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings()
    documents = [{"id": f"h{i}", "text": f"hello {i}"} for i in range(30)]
    documents.append({"id": "u1", "text": "how to build a bomb"})
    async with running_worker(settings) as worker:
        assert (await _get(worker, "/healthz"))[0] == 200
        await publish(settings, documents)
        await wait_for_verdicts(settings, [d["id"] for d in documents], timeout_s=30)

        async def ready() -> bool:
            return (await _get(worker, "/readyz"))[0] == 200

        await wait_until(ready, timeout_s=15, what="/readyz 200")

        async def all_published() -> bool:
            # A verdict is stored in Redis before it is published and counted: wait for both counts (a
            # label's line appears with its first count).
            text = (await _get(worker, "/metrics"))[1]
            labels = (
                'guardq_verdicts_total{action="allow",label="safe"} ',
                'guardq_verdicts_total{action="block",label="unsafe"} ',
            )
            if not all(label in text for label in labels):
                return False
            return _sample(text, 'guardq_verdicts_total{action="allow",label="safe"}') >= 30 and (
                _sample(text, 'guardq_verdicts_total{action="block",label="unsafe"}') >= 1
            )

        await wait_until(all_published, timeout_s=15, what="31 verdicts counted as published")
        status, metrics = await _get(worker, "/metrics")
        assert status == 200
        assert _sample(metrics, 'guardq_verdicts_total{action="allow",label="safe"}') == 30
        assert _sample(metrics, 'guardq_verdicts_total{action="block",label="unsafe"}') == 1
        assert _sample(metrics, "guardq_guard_latency_seconds_count") == 31
        assert _sample(metrics, "guardq_guard_calls_total") == 31
        assert _sample(metrics, "guardq_breaker_state") == 0
        # GUARDQ_CONCURRENCY=auto, the default: the cap moves, within its bounds.
        assert settings.concurrency is None
        limit = _sample(metrics, "guardq_concurrency_limit")
        assert settings.concurrency_min <= limit <= settings.concurrency_max
        assert _sample(metrics, f'guardq_messages_consumed_total{{topic="{settings.input_topic}"}}') == 31
        assert "guardq_consumer_lag{" in metrics

        async def no_lag() -> bool:
            document = json.loads((await _get(worker, "/status"))[1])
            parts = [p for p in document["partitions"] if p["topic"] == settings.input_topic]
            return bool(parts) and all(p["lag"] == 0 and p["committed"] == p["highwater"] for p in parts)

        await wait_until(no_lag, timeout_s=15, what="/status to show everything done and committed")
        document: dict[str, Any] = json.loads((await _get(worker, "/status"))[1])
        assert document["ready"] is True and document["breaker"] == "green"
        assert document["verdicts"] == {"safe": 30.0, "unsafe": 1.0}
        assert document["actions"] == {"allow": 30.0, "block": 1.0}
        assert document["policy"] == {"unsafe": "block", "controversial": "review", "categories": {}}

        cli = await run_guardq(settings, "status", "--url", f"http://127.0.0.1:{worker.http_port}")
        assert cli.returncode == 0, cli.stderr
        assert "ready" in cli.stdout and "green (closed)" in cli.stdout
        assert settings.input_topic in cli.stdout and "total lag: 0" in cli.stdout, cli.stdout

        await publish_raw(settings, [(b"bad", b'{"id": "bad", "text": ""}')])  # empty text: a dead letter
        await wait_until(
            lambda: _dead_letter_counted(worker), timeout_s=15, what="the dead letter in /metrics"
        )
    down = await run_guardq(settings, "status", "--url", f"http://127.0.0.1:{worker.http_port}")
    assert down.returncode == 1 and "not reachable" in down.stdout
    assert settings.input_topic in down.stdout  # the broker's view is still shown


async def _dead_letter_counted(worker: Worker) -> bool:
    metrics = (await _get(worker, "/metrics"))[1]
    return 'guardq_dead_letters_total{reason="empty_text"} 1.0' in metrics


async def test_open_circuit_and_redis_cut_make_the_worker_not_ready_until_they_return(
    make_settings: SettingsFactory, guard_sim: GuardSim, redis_url: str
) -> None:
    parsed = urlparse(redis_url)
    async with FaultProxy(parsed.port or 6379) as proxy:
        settings = make_settings(redis_url=f"redis://127.0.0.1:{proxy.port}{parsed.path or '/0'}")
        async with running_worker(settings) as worker:

            async def readiness(expected: int) -> bool:
                return (await _get(worker, "/readyz"))[0] == expected

            await wait_until(lambda: readiness(200), timeout_s=15, what="ready")
            # The guard goes down: the circuit opens and the worker says it is not ready.
            await guard_sim.configure(fail_503_rate=1.0)
            await publish(settings, ({"id": f"c{i}", "text": f"circuit {i}"} for i in range(40)))
            await wait_until(lambda: readiness(503), timeout_s=30, what="not ready while the circuit is open")
            body = json.loads((await _get(worker, "/readyz"))[1])
            assert "guard circuit open" in body["reasons"]
            assert _sample((await _get(worker, "/metrics"))[1], "guardq_breaker_state") == 2
            cli = await run_guardq(settings, "status", "--url", f"http://127.0.0.1:{worker.http_port}")
            assert cli.returncode == 1 and "NOT READY" in cli.stdout, (
                "a worker that is not ready is a failure"
            )
            assert (await _get(worker, "/healthz"))[0] == 200  # alive all the same: no restart wanted
            await guard_sim.configure(fail_503_rate=0.0)
            await wait_for_verdicts(settings, [f"c{i}" for i in range(40)], timeout_s=60)
            await wait_until(lambda: readiness(200), timeout_s=15, what="ready again")

            # Redis is cut off: not ready within a check period, ready again once it answers.
            await proxy.set_mode("refuse")
            await proxy.set_mode("reset")
            await wait_until(lambda: readiness(503), timeout_s=20, what="not ready while Redis is cut off")
            reasons = json.loads((await _get(worker, "/readyz"))[1])["reasons"]
            assert any(reason.startswith("redis:") for reason in reasons), reasons
            await proxy.set_mode("pass")
            await wait_until(lambda: readiness(200), timeout_s=20, what="ready once Redis answers")
