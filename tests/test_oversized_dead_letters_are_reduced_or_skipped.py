"""A dead letter the broker refuses whole is written reduced (a prefix of the value, without the original
record's headers, then a small prefix with the envelope only), marked with what was cut; one that cannot
be written in any form is a logged, counted skip. The worker goes on in every case and the messages
around get their verdicts. GUARDQ_KAFKA_MAX_MESSAGE_BYTES stands in for the brokers' message.max.bytes."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, running_worker, wait_for_verdicts
from worker.config.settings import Settings
from worker.failures.envelope import H_HEADERS_DROPPED, H_VALUE_TRUNCATED_FROM, DeadLetterEnvelope
from worker.failures.outbox import TRUNCATED_VALUE_BYTES

pytestmark = pytest.mark.integration


async def send_all(settings: Settings, records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> None:
    """Send as an ordinary producer would (its own 1 MiB limit, not the worker's)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, max_request_size=1024 * 1024)
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(settings.input_topic, value, key=key, headers=headers, partition=0)
    finally:
        await producer.stop()


def good(message_id: str) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    return message_id.encode(), f'{{"id": "{message_id}", "text": "fine"}}'.encode(), []


async def test_dead_letters_too_large_for_the_broker_are_written_reduced(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings(kafka_max_message_bytes=300_000)
    own_headers = [(f"h{i}", b"x" * 1200) for i in range(50)]  # 60 KB: under the header cap
    records = [
        good("g0"),
        (b"heavy", b"{" * 250_000, own_headers),  # with its headers over the limit; without, under
        good("g1"),
        (b"long", b"{" * 299_500, []),  # the value itself plus the envelope is over the limit
        good("g2"),
    ]
    async with running_worker(settings) as worker:
        await send_all(settings, records)
        await wait_for_verdicts(settings, ["g0", "g1", "g2"], timeout_s=60)
        dead = {
            record.key: record
            for record in await collect(settings, settings.dlq_topic, count=2, timeout_s=30)
        }
        reduced = worker.metrics.by_label(worker.metrics.dead_letters_reduced)
    heavy = dict(dead[b"heavy"].headers)
    assert dead[b"heavy"].value == b"{" * 250_000  # the value is whole; only its own headers went
    assert heavy[H_HEADERS_DROPPED] == b"50" and "h0" not in heavy
    assert DeadLetterEnvelope.from_headers(dead[b"heavy"].headers).error_reason == "invalid_json"
    long = dict(dead[b"long"].headers)
    assert dead[b"long"].value == b"{" * TRUNCATED_VALUE_BYTES
    assert long[H_VALUE_TRUNCATED_FROM] == b"299500"
    assert reduced == {"no_headers": 1.0, "value_prefix": 1.0}


async def test_a_dead_letter_that_fits_in_no_form_is_a_counted_skip_and_the_worker_goes_on(
    make_settings: SettingsFactory, guard_sim: GuardSim, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(kafka_max_message_bytes=1200, topic_partitions=1)
    async with running_worker(settings) as worker:
        await send_all(settings, [good("g0"), (b"unwritable", b"{" * 5000, []), good("g1")])
        await wait_for_verdicts(settings, ["g0", "g1"], timeout_s=60)
        loop = worker.fetch_loop
        assert loop is not None

        assert await collect(settings, settings.dlq_topic, count=1, timeout_s=2) == []
        skipped = worker.metrics.by_label(worker.metrics.dead_letters_unwritable)
        done = [p.done_offset for p in loop.partition_lags() if p.topic == settings.input_topic]
    assert skipped == {"invalid_json": 1.0}
    assert done == [3]  # the skipped record is done: the partition moves on
    logged = [r.getMessage() for r in caplog.records if "could not be written in any form" in r.getMessage()]
    assert logged and f"{settings.input_topic}/0@1" in logged[0]
