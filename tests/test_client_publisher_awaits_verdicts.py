"""`worker.client.Publisher` against tansu, Redis and the simulator: a thousand concurrent `moderate()` calls
all answered with their own verdict (one guard call each), timeouts honoured and naming the id, a stored
verdict answered without publishing again, a reused id refused, the caller's trace carried to the verdict."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest
from opentelemetry.sdk.trace import TracerProvider

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, running_worker
from worker.client import InvalidInput, ModerationTimeout, Publisher, Verdict, VerdictConflict
from worker.config.settings import Settings
from worker.kafka import clients as kafka

pytestmark = pytest.mark.integration


def publisher_for(settings: Settings, *, redis: bool = True) -> Publisher:
    return Publisher(
        settings.kafka_bootstrap,
        settings.input_topic,
        verdict_topic=settings.verdict_topic,
        redis_url=settings.redis_url if redis else None,
        redis_prefix=settings.redis_prefix,
    )


def sim_digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


async def test_a_thousand_concurrent_moderate_calls_are_each_answered_with_their_own_verdict(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings(concurrency=64)
    texts = {
        f"c{n}": f"how do I kill my neighbour, case {n}" if n % 3 == 0 else f"a recipe for bread, case {n}"
        for n in range(1000)
    }
    async with running_worker(settings), publisher_for(settings) as publisher:
        started = time.monotonic()
        verdicts = await asyncio.gather(
            *(publisher.moderate(text, id=message_id, timeout_s=90) for message_id, text in texts.items())
        )
        elapsed = time.monotonic() - started
    assert [verdict.id for verdict in verdicts] == list(texts)
    for verdict in verdicts:
        assert isinstance(verdict, Verdict) and not verdict.provisional
        unsafe = "kill" in texts[verdict.id]
        assert (verdict.label, verdict.action) == (("unsafe", "block") if unsafe else ("safe", "allow"))
    calls = (await guard_sim.stats())["calls_by_content"]
    assert all(calls.get(sim_digest(text)) == 1 for text in texts.values()), "one guard call per id"
    assert elapsed < 90


async def test_moderate_raises_a_timeout_naming_the_id_when_no_worker_answers(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    await kafka.ensure_topics(settings)
    async with publisher_for(settings) as publisher:
        started = time.monotonic()
        with pytest.raises(ModerationTimeout) as caught:
            await publisher.moderate("is anyone there", id="lonely-1", timeout_s=1.5)
        waited = time.monotonic() - started
    assert caught.value.message_id == "lonely-1"
    assert "lonely-1" in str(caught.value)
    assert 1.5 <= waited < 4, waited


async def test_a_stored_verdict_is_returned_without_publishing_and_a_reused_id_is_refused(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings()
    async with publisher_for(settings) as publisher:
        async with running_worker(settings):
            first = await publisher.moderate("a recipe for soup", id="soup-1", timeout_s=30)
        # No worker runs now: only Redis can answer.
        started = time.monotonic()
        again = await publisher.moderate("a recipe for soup", id="soup-1", timeout_s=5)
        assert time.monotonic() - started < 1
        assert again == first
        with pytest.raises(VerdictConflict, match="soup-1"):
            await publisher.moderate("something else entirely", id="soup-1", timeout_s=5)
        with pytest.raises(InvalidInput):
            await publisher.moderate("   ", id="blank-1", timeout_s=5)
    assert (await guard_sim.stats())["calls_by_content"].get(sim_digest("a recipe for soup")) == 1


async def test_without_redis_the_verdict_comes_from_the_verdict_topic_in_the_callers_trace(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    tracer = TracerProvider().get_tracer("caller")
    async with running_worker(settings), publisher_for(settings, redis=False) as publisher:
        with tracer.start_as_current_span("handle request") as span:
            verdict = await publisher.moderate("tell me about tea", timeout_s=30)
            published_id = await publisher.publish("and about coffee", metadata={"user": "u1"})
    assert isinstance(verdict, Verdict) and verdict.label == "safe"
    assert verdict.trace_id == format(span.get_span_context().trace_id, "032x")
    assert published_id


def test_bad_options_are_named_as_the_caller_wrote_them() -> None:
    with pytest.raises(ValueError, match=r"^bootstrap='nohost': 'nohost' is not host:port"):
        Publisher("nohost")
    with pytest.raises(ValueError, match=r"^topic='a b'"):
        Publisher(topic="a b")
    with pytest.raises(TypeError, match="unknown options: bootstrap_servers"):
        Publisher(bootstrap_servers="x:1")


def test_options_that_contradict_each_other_are_named_as_the_caller_wrote_them() -> None:
    with pytest.raises(ValueError) as half_sasl:
        Publisher(security_protocol="SASL_SSL", sasl_mechanism="PLAIN")
    assert str(half_sasl.value) == (
        "security_protocol=SASL_*: set sasl_mechanism, sasl_username and sasl_password"
        " (or sasl_mechanism=OAUTHBEARER and sasl_oauth_token_file)"
    )
    with pytest.raises(ValueError, match=r"^sasl_\* is set but security_protocol=PLAINTEXT uses no SASL$"):
        Publisher(sasl_oauth_token_file=__file__)
    with pytest.raises(ValueError, match=r"^ssl_keyfile needs ssl_certfile"):
        Publisher(security_protocol="SSL", ssl_keyfile=__file__)


async def test_without_a_reachable_redis_the_verdict_topic_still_answers(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    async with (
        running_worker(settings),
        Publisher(
            settings.kafka_bootstrap,
            settings.input_topic,
            verdict_topic=settings.verdict_topic,
            redis_url="redis://127.0.0.1:1/0",  # nothing listens there
        ) as publisher,
    ):
        verdict = await publisher.moderate("a recipe for stew", timeout_s=30)
    assert isinstance(verdict, Verdict) and verdict.label == "safe"


async def test_a_publisher_that_fails_to_open_leaves_nothing_running(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    publisher = Publisher(settings.kafka_bootstrap, settings.input_topic, redis_url="redis://h:notaport/0")
    with pytest.raises(ValueError):
        await publisher.__aenter__()
    assert publisher._producer._producer is None, "the started producer was stopped again"
