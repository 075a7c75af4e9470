"""What real producers put on the input topic, sent through the real broker, never stops the worker:
every codec is moderated; a header name that is not UTF-8, a CRC-broken batch, a gzip bomb and a
header-heavy record each end as a dead letter with its reason, while the messages around them (in the
same partition, the same batch even) get their verdicts, and memory stays bounded."""

from __future__ import annotations

import json
import resource

import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, running_worker, wait_for_verdicts
from tests.rawbatches import RawRecord, encode_batch, gzip_stream, send_batch
from worker.failures.envelope import H_ERROR_REASON, DeadLetterEnvelope

pytestmark = pytest.mark.integration


def request(message_id: str) -> bytes:
    return json.dumps({"id": message_id, "text": f"hello from {message_id}"}).encode()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_batches_of_every_codec_are_moderated(
    make_settings: SettingsFactory, guard_sim: GuardSim, codec: str
) -> None:
    settings = make_settings()
    ids = [f"{codec}-{i}" for i in range(30)]
    async with running_worker(settings):
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, compression_type=codec, linger_ms=20
        )
        await producer.start()
        try:
            sends = [await producer.send(settings.input_topic, request(i), key=i.encode()) for i in ids]
            for sent in sends:
                await sent
        finally:
            await producer.stop()
        verdicts = await wait_for_verdicts(settings, ids, timeout_s=60)
    assert set(verdicts) == set(ids)


async def test_undecodable_batches_are_dead_lettered_and_their_neighbours_moderated(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings()
    bomb = gzip_stream(b"\0" * (1 << 20) for _ in range(1024))  # 1 GiB of zeros in about 1 MiB
    batches = [
        ("plain", encode_batch([RawRecord(request("n0"), key=b"n0")])),
        (
            "bad-header",
            encode_batch(
                [
                    RawRecord(request("n1"), key=b"n1"),
                    RawRecord(request("bad-header"), key=b"bad-header", headers=[(b"\xff\xfeh", b"v")]),
                    RawRecord(request("n2"), key=b"n2"),
                ],
                codec_name="gzip",
            ),
        ),
        ("crc", encode_batch([RawRecord(request("crc-a")), RawRecord(request("crc-b"))], break_crc=True)),
        ("n3", encode_batch([RawRecord(request("n3"), key=b"n3")], codec_name="zstd")),
        ("bomb", encode_batch([RawRecord(request("bomb"))], codec_name="gzip", compressed=bomb)),
        ("n4", encode_batch([RawRecord(request("n4"), key=b"n4")])),
        (
            "many-headers",
            encode_batch([RawRecord(request("many"), key=b"many", headers=[(b"h", b"")] * 3000)]),
        ),
        ("n5", encode_batch([RawRecord(request("n5"), key=b"n5")], codec_name="lz4")),
    ]
    before_mb = peak_rss_mb()
    async with running_worker(settings) as worker:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            for _, batch in batches:
                await send_batch(producer, settings.input_topic, 0, batch)
        finally:
            await producer.stop()
        good = ["n0", "n1", "n2", "n3", "n4", "n5"]
        verdicts = await wait_for_verdicts(settings, good, timeout_s=60)
        dead = await collect(settings, settings.dlq_topic, count=4, timeout_s=30)
        assert worker.fetch_loop is not None and worker.fetch_loop.fatal_error is None
        assert worker.fetch_loop.stats.fetch_errors >= 1
    assert set(verdicts) == set(good)
    by_reason: dict[str, list[DeadLetterEnvelope]] = {}
    letters = {}
    for record in dead:
        envelope = DeadLetterEnvelope.from_headers(record.headers)
        by_reason.setdefault(envelope.error_reason, []).append(envelope)
        letters[envelope.original_offset] = (record, envelope)
    assert sorted(len(v) for v in by_reason.values()) == [1, 3]
    assert len(by_reason["undecodable"]) == 3 and len(by_reason["too_large"]) == 1
    # The record with the bad header name keeps its key and value (it can be fixed and replayed).
    bad_header = next(r for r, e in letters.values() if r.key == b"bad-header")
    assert bad_header.value == request("bad-header")
    assert "not UTF-8" in dict(bad_header.headers)["guardq.error.message"].decode()
    messages = sorted(e.error_message for e in by_reason["undecodable"])
    assert any("CRC mismatch" in m and ".." in m for m in messages)  # the whole two-record batch
    assert any("inflates past" in m for m in messages)
    many = next(r for r, e in letters.values() if e.error_reason == "too_large")
    assert dict(many.headers)[H_ERROR_REASON] == b"too_large"
    assert len(many.headers) < 40  # the 3000 headers were not copied into the dead letter
    # A 1 GiB inflation never happened in this process.
    assert peak_rss_mb() - before_mb < 300
