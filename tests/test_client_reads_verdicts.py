"""Reading verdicts back: `Verdict.from_json` / `parse_verdict` take what the worker writes (and tolerate what
the schema lets later versions add), name what is wrong; `VerdictConsumer` yields each id's verdict once,
a provisional one before its final one and never after it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import SettingsFactory
from worker.client import ProvisionalVerdict, Verdict, VerdictConsumer, parse_verdict
from worker.client.consumer import SeenVerdicts
from worker.client.waiter import VerdictWaiter
from worker.config.settings import Settings
from worker.kafka import clients as kafka


def final(message_id: str = "m1", **changes: Any) -> Verdict:
    fields: dict[str, Any] = {
        "id": message_id,
        "label": "unsafe",
        "action": "block",
        "categories": ["Violent"],
        "refusal": None,
        "model": "Qwen/Qwen3Guard-Gen-8B",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "attempts": 1,
        "latency_ms": 12.5,
        "processed_at": "2026-12-03T10:00:00.000Z",
        "metadata": {"big": 2**70},
        "content_sha256": "a" * 64,
    }
    return Verdict(**(fields | changes))


def provisional(message_id: str = "m1") -> ProvisionalVerdict:
    return ProvisionalVerdict(
        id=message_id,
        action="review",
        model="Qwen/Qwen3Guard-Gen-8B",
        trace_id="0af7651916cd43dd8448eb211c80319c",
        attempts=0,
        latency_ms=0.0,
        processed_at="2026-12-03T10:00:00.000Z",
        metadata={},
        content_sha256="a" * 64,
    )


def test_a_verdict_the_worker_writes_reads_back_equal() -> None:
    verdict = final()
    assert Verdict.from_json(verdict.to_json()) == verdict
    assert parse_verdict(verdict.to_json()) == verdict
    assert parse_verdict(provisional().to_json()) == provisional()


def test_unknown_fields_are_ignored_and_fields_of_later_versions_default() -> None:
    document = json.loads(final().to_json())
    del document["content_sha256"], document["chunks"], document["provisional"]
    document["added_in_a_later_version"] = {"x": 1}
    verdict = Verdict.from_json(json.dumps(document))
    assert (verdict.content_sha256, verdict.chunks, verdict.provisional) == ("", 1, False)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"label": "maybe"}, "'label' is 'maybe'"),
        ({"action": None}, "'action' is None"),
        ({"attempts": "1"}, "'attempts' has the wrong type"),
        ({"attempts": True}, "'attempts' has the wrong type"),
        ({"categories": ["ok", 3]}, "'categories' must list strings"),
        ({"refusal": "no"}, "'refusal' has the wrong type"),
    ],
)
def test_a_wrong_field_is_named(change: dict[str, Any], named: str) -> None:
    document = json.loads(final().to_json()) | change
    with pytest.raises(ValueError, match=named):
        Verdict.from_json(json.dumps(document))


def test_missing_fields_and_wrong_documents_are_named() -> None:
    document = json.loads(final().to_json())
    del document["model"]
    with pytest.raises(ValueError, match="'model' is missing"):
        Verdict.from_json(json.dumps(document))
    with pytest.raises(ValueError, match="is provisional"):
        Verdict.from_json(provisional().to_json())
    with pytest.raises(ValueError, match="must be JSON"):
        parse_verdict(b"{nope")
    with pytest.raises(ValueError, match="not a list"):
        parse_verdict(b"[1]")
    with pytest.raises(ValueError, match="must be JSON"):
        parse_verdict(b"[" * 100_000)
    with pytest.raises(ValueError, match="must be JSON"):
        parse_verdict(b'{"id": "\xff\xfe"}')


async def test_the_verdict_reader_passes_over_records_that_are_not_verdicts() -> None:
    waiter = VerdictWaiter(Settings.load({}))
    expected = waiter.expect("x", "a" * 64, final_only=False)
    hostile = [b"[" * 100_000, b"\xff\xfe", b"null", b'{"id": 1}', b"", None]
    for value in hostile:
        waiter._take(b"x", value)
        waiter._take(None, value)
    assert not expected.verdict.done()
    waiter._take(b"x", final("x", content_sha256="b" * 64).to_json())  # another content's verdict
    assert not expected.verdict.done()
    waiter._take(b"x", final("x").to_json())
    assert expected.verdict.result() == final("x")


def test_seen_verdicts_pass_one_provisional_then_each_final_verdict_made_once() -> None:
    seen = SeenVerdicts(remember=2)
    assert seen.first(provisional("a"))
    assert not seen.first(provisional("a"))
    assert seen.first(final("a"))
    assert not seen.first(final("a"))
    assert not seen.first(provisional("a")), "a provisional verdict after the final one is old news"
    remoderated = final("a", processed_at="2026-12-03T11:00:00.000Z", label="safe", action="allow")
    assert seen.first(remoderated), "a forced replay's new verdict is news"
    assert not seen.first(remoderated)
    assert seen.first(final("b")) and seen.first(final("c"))
    assert seen.first(final("a")), "only the last `remember` ids are remembered"


@pytest.mark.integration
async def test_verdict_consumer_yields_each_ids_verdict_once_provisional_first(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(topic_partitions=1)
    await kafka.ensure_topics(settings)
    sent = [provisional("p1"), final("m1"), final("m1"), final("p1"), provisional("p1"), final("m2")]
    junk = [b"not a verdict", b"[" * 100_000, b'{"id": "j", "label": "maybe"}', b"\xff"]
    producer = kafka.make_producer(settings)
    await producer.start()
    try:
        for value in junk[:2]:
            await producer.send_and_wait(settings.verdict_topic, value, key=b"junk")
        for verdict in sent:
            await producer.send_and_wait(settings.verdict_topic, verdict.to_json(), key=verdict.id.encode())
        for value in junk[2:]:
            await producer.send_and_wait(settings.verdict_topic, value, key=b"junk")
    finally:
        await producer.stop()
    got: list[tuple[str, bool]] = []
    async with VerdictConsumer(
        settings.kafka_bootstrap, group_id=f"{settings.group_id}-reader", topic=settings.verdict_topic
    ) as verdicts:
        async for verdict in verdicts:
            got.append((verdict.id, verdict.provisional))
            if verdict.id == "m2":
                await verdicts.commit()
                break
        assert verdicts.skipped == 2  # the junk before m2; the rest comes after it
    assert got == [("p1", True), ("m1", False), ("p1", False), ("m2", False)]
