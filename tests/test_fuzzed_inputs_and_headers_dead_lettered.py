"""Fuzzed record values and headers: the worker never stops; every valid message gets a verdict, every
invalid one a dead letter with a documented reason, and the two add up to what was published.

The fuzz is a seeded generator (the same records every run): random bytes, JSON of wrong shapes, random
objects over the message's own field names, and valid messages with awkward text. Every record also
gets random headers, including guardq.* and traceparent names with junk values. Whether a value is
valid is decided by ``parse_request``; the test checks what the running worker did with each record.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, distinct_verdict_ids, running_worker, wait_for_verdicts
from worker.config.settings import Settings
from worker.core.errors import InvalidInput
from worker.core.messages import parse_request
from worker.failures.envelope import H_ERROR_REASON, REASONS
from worker.kafka import clients as kafka

pytestmark = pytest.mark.integration

SEED = 20261123
PER_KIND = 40
MAX_TEXT_CHARS = 2000

# Code points that trip naive handling: controls, NUL, separators, BOM, combining marks, RTL, astral.
AWKWARD = "\x00\x01\t\n\r\x7f\u0085\u00a0\u200b\u200e\u202e\u2028\u2029\ufeff\u0301\ufffd\U0001f600\U00010348"
FIELDS = ("id", "text", "kind", "prompt", "metadata")
HEADER_NAMES = (
    "traceparent",
    "TRACEPARENT",
    "tracestate",
    "guardq.error.reason",
    "guardq.error.class",
    "guardq.original.topic",
    "guardq.original.partition",
    "guardq.original.offset",
    "guardq.original.timestamp",
    "guardq.attempts",
    "guardq.first_failed_at",
    "guardq.replay_count",
    "guardq.history",
    "guardq.",
    "",
)
JUNK_VALUES = (
    b"",
    b"\xff\xfe\x00",
    b"00-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-0000000000000000-01",
    b"00-00000000000000000000000000000000-0000000000000000-01",  # all-zero ids are invalid
    b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # a valid one
    b"99999999999999999999999999",
    b"-1",
    b"1e309",
    b"[",
    b'[{"at": 1}, 2, "x"]',
    b'{"not": "a list"}',
    b"x" * 10_000,
    "caf\u00e9 \u202e".encode(),
)


@dataclass(frozen=True)
class Fuzzed:
    """One record to publish and what the worker must do with it (``reason`` None: a verdict)."""

    key: bytes
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    message_id: str | None
    reason: str | None


def random_text(rng: random.Random, size: int) -> str:
    """Letters, awkward code points and random BMP/astral characters, never a lone surrogate."""
    chars = []
    for _ in range(size):
        pick = rng.random()
        if pick < 0.5:
            chars.append(rng.choice('abcdefghijklmnopqrstuvwxyz {}[]"\\:,'))
        elif pick < 0.75:
            chars.append(rng.choice(AWKWARD))
        else:
            point = rng.randrange(0x20, 0x2FFFF)
            chars.append(chr(point) if not 0xD800 <= point <= 0xDFFF else "?")
    return "".join(chars)


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value, at most 3 levels deep."""
    choice = rng.randrange(8 if depth < 3 else 6)
    scalars: list[Callable[[], Any]] = [
        lambda: None,
        lambda: rng.random() < 0.5,
        lambda: rng.randrange(-(2**70), 2**70),
        lambda: rng.uniform(-1e300, 1e300),
        lambda: random_text(rng, rng.randrange(0, 12)),
        lambda: rng.choice(["", " ", "prompt", "response", "\u3000"]),
    ]
    if choice < 6:
        return scalars[choice]()
    if choice == 6:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {random_text(rng, 3): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def random_bytes(rng: random.Random) -> bytes | None:
    """Raw bytes: random, or one of the classic parser traps."""
    traps: list[bytes | None] = [
        None,  # a tombstone
        b"",
        b"\xef\xbb\xbf{}",  # a BOM
        b"\xc0\xaf",  # overlong UTF-8
        b"[" * 100_000 + b"]" * 100_000,  # nested past the recursion limit
        b"1e999",
        b"NaN",
        b'{"id": "x", "text": "a"',  # truncated
        b"\x00" * 64,
    ]
    if rng.random() < 0.4:
        return rng.choice(traps)
    return rng.randbytes(rng.randrange(1, 300))


def wrong_shape(rng: random.Random, index: int) -> bytes:
    """JSON that is well formed but not a moderation request."""
    good = {"id": f"w{index}", "text": "fine text"}
    variants: list[Callable[[], Any]] = [
        lambda: random_json(rng),  # any top-level shape
        lambda: [good],
        lambda: good | {"id": rng.choice([7, 1.5, [], {}, True])},
        lambda: good | {"text": rng.choice([7, [], {"t": "x"}, False])},
        lambda: {"text": "no id"},
        lambda: {"id": f"w{index}"},
        lambda: good | {"id": " \t"},
        lambda: good | {"id": "i" * 513},
        lambda: good | {"text": " \n\u3000 "},
        lambda: good | {"text": "t" * (MAX_TEXT_CHARS + 1)},
        lambda: good | {"kind": rng.choice(["poem", "", "PROMPT", 3])},
        lambda: good | {"kind": "response"},
        lambda: good | {"kind": "response", "prompt": "  "},
        lambda: good | {"metadata": rng.choice([[], "m", 1])},
        lambda: good | {"metadata": {"big": "m" * 70_000}},
    ]
    value = json.dumps(rng.choice(variants)())
    if rng.random() < 0.15:
        value = value.replace('"fine text"', '"\\ud800 lone surrogate"')
    return value.encode()


def random_object(rng: random.Random, index: int) -> bytes:
    """An object over the message's own field names with random values: sometimes valid, mostly not."""
    document = {name: random_json(rng) for name in FIELDS if rng.random() < 0.7}
    if isinstance(document.get("id"), str):
        document["id"] = f"o{index}:{document['id']}"  # unique, so each valid one has its own verdict
    if rng.random() < 0.5:
        document["text"] = random_text(rng, rng.randrange(1, 40))
    return json.dumps(document, ensure_ascii=rng.random() < 0.5).encode("utf-8")


def valid_message(rng: random.Random, index: int) -> bytes:
    """A valid request with awkward text, sometimes a response with its prompt and metadata."""
    document: dict[str, Any] = {"id": f"v{index}:{random_text(rng, 8)}", "text": "x" + random_text(rng, 60)}
    if rng.random() < 0.4:
        document |= {"kind": "response", "prompt": "p" + random_text(rng, 30)}
    if rng.random() < 0.4:
        document["metadata"] = {"tenant": random_text(rng, 5), "n": rng.randrange(10**6)}
    return json.dumps(document, ensure_ascii=rng.random() < 0.5).encode()


def random_headers(rng: random.Random) -> list[tuple[str, bytes | None]]:
    """Zero to four headers with guardq.*, traceparent or random names and junk (or missing) values."""
    headers: list[tuple[str, bytes | None]] = []
    for _ in range(rng.randrange(5)):
        name = rng.choice(HEADER_NAMES) if rng.random() < 0.8 else random_text(rng, rng.randrange(1, 10))
        roll = rng.random()
        value = (
            None
            if roll < 0.1
            else rng.randbytes(rng.randrange(40))
            if roll < 0.4
            else rng.choice(JUNK_VALUES)
        )
        headers.append((name, value))
    return headers


def expected_outcome(value: bytes | None) -> tuple[str | None, str | None]:
    """(message id, None) for a valid value, (None, reason) for an invalid one."""
    try:
        return parse_request(value, MAX_TEXT_CHARS).id, None
    except InvalidInput as exc:
        return None, exc.reason


def fuzz_corpus() -> list[Fuzzed]:
    """The same records on every run."""
    rng = random.Random(SEED)
    makers: list[Callable[[int], bytes | None]] = [
        lambda _: random_bytes(rng),
        lambda i: wrong_shape(rng, i),
        lambda i: random_object(rng, i),
        lambda i: valid_message(rng, i),
    ]
    corpus = []
    for index in range(PER_KIND * len(makers)):
        value = makers[index % len(makers)](index)
        message_id, reason = expected_outcome(value)
        corpus.append(Fuzzed(f"k{index}".encode(), value, random_headers(rng), message_id, reason))
    return corpus


async def publish_fuzzed(settings: Settings, corpus: list[Fuzzed]) -> None:
    """Publish every record as it is, headers included (the Publisher adds its own traceparent)."""
    producer = kafka.make_producer(settings)
    await producer.start()
    try:
        for item in corpus:
            await producer.send_and_wait(settings.input_topic, item.value, key=item.key, headers=item.headers)
    finally:
        await producer.stop()


async def test_fuzzed_values_and_headers_get_a_verdict_or_a_dead_letter_and_the_worker_keeps_going(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings(max_text_chars=MAX_TEXT_CHARS, concurrency=16)
    corpus = fuzz_corpus()
    valid = {item.key: item for item in corpus if item.message_id is not None}
    invalid = {item.key: item for item in corpus if item.reason is not None}
    assert len(valid) >= PER_KIND and len(invalid) >= 2 * PER_KIND, "the generator lost its spread"
    async with running_worker(settings) as worker:
        await publish_fuzzed(settings, corpus)
        ids = [item.message_id for item in valid.values() if item.message_id is not None]
        stored = await wait_for_verdicts(settings, ids, timeout_s=30)
        dead = await collect(settings, settings.dlq_topic, count=len(invalid), timeout_s=20)
        assert worker.ready.is_set(), "the worker stopped"
        assert worker.fetch_loop is not None and worker.fetch_loop.fatal_error is None
    assert set(stored) == set(ids)
    on_topic = await distinct_verdict_ids(settings, expected=len(ids), timeout_s=20)
    assert set(on_topic) == set(ids)
    dead_by_key = {record.key: record for record in dead}
    assert len(dead_by_key) == len(dead), "a record was dead-lettered twice"
    assert set(dead_by_key) == set(invalid), "dead letters are not exactly the invalid records"
    assert len(stored) + len(dead_by_key) == len(corpus)
    for key, record in dead_by_key.items():
        reasons = [value for name, value in record.headers if name == H_ERROR_REASON]
        assert len(reasons) == 1, key
        assert reasons[0] is not None and reasons[0].decode() in REASONS, key
        assert reasons[0].decode() == invalid[key].reason, key
        assert record.value == invalid[key].value, "the dead letter must keep the original bytes"
    assert (await guard_sim.stats())["requests"] == len(ids)
    reasons_seen = sorted({item.reason for item in invalid.values() if item.reason})
    print(
        f"{len(corpus)} fuzzed records: {len(ids)} verdicts, {len(dead)} dead letters ({', '.join(reasons_seen)})"
    )
