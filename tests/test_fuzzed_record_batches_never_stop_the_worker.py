"""A seeded fuzz of whole record batches, sent through the real broker to a running worker: codecs,
header names and counts, value sizes and shapes, broken CRCs, corrupt compressed sections, inflation
bombs. The worker never stops; every good message gets its verdict; every bad record, and every batch
that cannot be decoded, gets exactly one dead letter with the reason the fuzz predicted."""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field

import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, running_worker, wait_for_verdicts
from tests.rawbatches import RawRecord, encode_batch, gzip_stream, send_batch
from worker.failures.envelope import DeadLetterEnvelope

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("GUARDQ_FUZZ_SEED", "20261202"))
BATCHES = 60
PARTITIONS = 4


@dataclass
class Plan:
    """What the fuzz sent and what the worker must make of it."""

    good: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)  # expected dead letters by reason


def fuzz_record(rng: random.Random, serial: int, plan_good: list[str], expected: list[str]) -> RawRecord:
    message_id = f"z{serial}"
    value = json.dumps({"id": message_id, "text": f"fuzzed text {serial} " + "ab " * rng.randrange(0, 400)})
    headers: list[tuple[bytes, bytes | None]] = [(b"traceparent", b"00-junk")] if rng.random() < 0.3 else []
    shape = rng.choices(
        ["good", "not-json", "bad-header", "many-headers", "null-header", "binary"], [6, 1, 1, 1, 1, 1]
    )[0]
    if shape == "not-json":
        expected.append("invalid_json")
        junk = "".join(rng.choice('{[]:," x1') for _ in range(rng.randrange(0, 3000)))
        return RawRecord(b"{" + junk.encode(), key=message_id.encode(), headers=headers)
    if shape == "binary":
        expected.append("invalid_utf8")
        return RawRecord(b'{"id": "x", "text": "\xff\xfe"}', key=message_id.encode(), headers=headers)
    if shape == "bad-header":
        expected.append("undecodable")
        headers.append((rng.choice([b"\xff", b"\xc3\x28", b"ok\xe2\x82"]), b"v"))
    elif shape == "many-headers":
        expected.append("too_large")
        headers += [(b"h", b"")] * rng.randrange(200, 2000)
    else:
        if shape == "null-header":
            headers.append((b"empty", None))
        plan_good.append(message_id)
    return RawRecord(value.encode(), key=message_id.encode(), headers=headers)


def fuzz_batch(rng: random.Random, serial: int, plan: Plan) -> bytes:
    good: list[str] = []
    expected: list[str] = []
    records = [fuzz_record(rng, serial * 100 + i, good, expected) for i in range(rng.randrange(1, 7))]
    codec = rng.choice(["none", "gzip", "snappy", "lz4", "zstd"])
    damage = rng.choices(["none", "crc", "corrupt", "bomb"], [12, 1, 1, 1])[0]
    if damage == "none":
        plan.good += good
        plan.reasons.update(expected)
        return encode_batch(records, codec_name=codec)
    plan.reasons["undecodable"] += 1  # one dead letter for the whole batch
    if damage == "crc":
        return encode_batch(records, codec_name=codec, break_crc=True)
    if damage == "corrupt":
        return encode_batch(
            records, codec_name=rng.choice(["gzip", "snappy", "lz4", "zstd"]), compressed=rng.randbytes(200)
        )
    return encode_batch(
        records, codec_name="gzip", compressed=gzip_stream(b"\0" * (1 << 20) for _ in range(24))
    )


async def test_fuzzed_batches_never_stop_the_worker_and_every_good_message_gets_a_verdict(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    rng = random.Random(SEED)
    plan = Plan()
    batches = [(rng.randrange(PARTITIONS), fuzz_batch(rng, serial, plan)) for serial in range(BATCHES)]
    settings = make_settings(max_inflate_mb=16, topic_partitions=PARTITIONS)
    async with running_worker(settings) as worker:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            for partition, batch in batches:
                await send_batch(producer, settings.input_topic, partition, batch)
        finally:
            await producer.stop()
        verdicts = await wait_for_verdicts(settings, plan.good, timeout_s=90)
        expected_dead = sum(plan.reasons.values())
        dead = await collect(settings, settings.dlq_topic, count=expected_dead + 1, timeout_s=10)
        assert worker.fetch_loop is not None and worker.fetch_loop.fatal_error is None
        fetch_errors = worker.fetch_loop.stats.fetch_errors
    found = Counter(DeadLetterEnvelope.from_headers(record.headers).error_reason for record in dead)
    print(f"\nfuzz: {len(plan.good)} good, dead letters {dict(found)}, fetch errors {fetch_errors}")
    assert set(verdicts) == set(plan.good)
    assert found == plan.reasons
    assert plan.reasons["undecodable"] > 0 and fetch_errors > 0  # the fuzz did reach the failing fetch path
