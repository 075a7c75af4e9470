"""`guardq status`: a worker's ``/status`` and the broker's view of the group, as one readable table.

The broker side needs no worker: committed offsets of the consumer group and highwater marks (learnt
from a fetch; end offsets are unreliable on some brokers) of the input and retry topics, and the size of
the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from worker.config.settings import Settings
from worker.core.errors import one_line
from worker.kafka import clients as kafka
from worker.kafka.reading import seek_to_current_end
from worker.telemetry.metrics import PartitionLag

FETCH_TIMEOUT_S = 10.0
COLOURS = {"green": "green (closed)", "yellow": "yellow (half-open)", "red": "red (open: consumption paused)"}


@dataclass(frozen=True)
class BrokerView:
    """The group's progress per partition, and how many records the dead-letter topic holds."""

    partitions: list[PartitionLag]
    dead_letters: int | None


async def fetch_worker_status(url: str, *, timeout_s: float = 3.0) -> dict[str, Any]:
    """GET ``<url>/status``; raises ``OSError``/``aiohttp.ClientError``/``TimeoutError`` when unreachable."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url.rstrip("/") + "/status") as reply,
    ):
        reply.raise_for_status()
        document: dict[str, Any] = json.loads(await reply.read())
        return document


async def _highwaters(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The highwater marks of ``tps`` that a fetch reports within ``FETCH_TIMEOUT_S``."""
    consumer.assign(tps)
    with contextlib.suppress(TimeoutError):  # show what is known; the rest prints as "?"
        await seek_to_current_end(consumer, tps, timeout_s=FETCH_TIMEOUT_S)
    return {tp: mark for tp in tps if (mark := consumer.highwater(tp)) is not None}


async def broker_view(settings: Settings) -> BrokerView:
    """Committed offsets and highwater marks of the input and retry topics, and the DLQ's size."""
    consumer = kafka.make_consumer(settings, group_id=None)
    admin = AIOKafkaAdminClient(**kafka.connection_options(settings), request_timeout_ms=10_000)
    try:
        await consumer.start()
        await admin.start()
        await consumer.topics()
        tps = [
            TopicPartition(topic, p)
            for topic in (settings.input_topic, *settings.retry_topics)
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        dlq = [
            TopicPartition(settings.dlq_topic, p)
            for p in sorted(consumer.partitions_for_topic(settings.dlq_topic) or ())
        ]
        committed = await admin.list_consumer_group_offsets(settings.group_id, partitions=tps) if tps else {}
        marks = await _highwaters(consumer, tps + dlq) if tps or dlq else {}
    finally:
        await admin.close()
        await consumer.stop()
    partitions = [
        PartitionLag(
            tp.topic,
            tp.partition,
            None,
            committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0,
            marks.get(tp),
        )
        for tp in tps
    ]
    dead = sum(marks[tp] for tp in dlq if tp in marks) if dlq and all(tp in marks for tp in dlq) else None
    return BrokerView(partitions, dead)


def render(url: str, worker: dict[str, Any] | str, broker: BrokerView | str) -> str:
    """The status as text: the worker's state, then one line per partition. ``worker`` and ``broker`` are
    either what they answered or why they could not be reached."""
    lines = []
    if isinstance(worker, str):
        lines.append(f"worker      {url}: not reachable ({worker})")
    else:
        ready = (
            "ready" if worker.get("ready") else "NOT READY: " + ", ".join(worker.get("not_ready_because", []))
        )
        lines.append(
            f"worker      {url}  {ready}  (guardq {worker.get('version')}, up {worker.get('uptime_s')} s)"
        )
        lines.append(f"breaker     {COLOURS.get(str(worker.get('breaker')), str(worker.get('breaker')))}")
        concurrency = worker.get("concurrency", {})
        lines.append(
            f"throughput  {worker.get('throughput_per_s', 0)} msg/s over the last minute;  in flight "
            f"{worker.get('in_flight', 0)};  guard calls {concurrency.get('in_flight', 0)}/{concurrency.get('limit')}"
        )
        dead = worker.get("dead_letters", {})
        shown = ", ".join(f"{reason} {int(count)}" for reason, count in sorted(dead.items())) or "none"
        lines.append(f"dead letters by this worker since start: {int(sum(dead.values()))} ({shown})")
    if isinstance(broker, str):
        lines.append(f"broker      not reachable ({broker})")
        return "\n".join(lines)
    if broker.dead_letters is not None:
        lines.append(f"dead-letter topic holds {broker.dead_letters} record(s)")
    lines.append("")
    lines.append(f"{'TOPIC':<48} {'PART':>4} {'COMMITTED':>10} {'HIGHWATER':>10} {'LAG':>8}")
    total = 0
    for part in broker.partitions:
        lag = part.lag
        total += lag or 0
        shown_lag = "?" if lag is None else str(lag)
        highwater = "?" if part.highwater is None else str(part.highwater)
        lines.append(
            f"{part.topic:<48} {part.partition:>4} {part.committed:>10} {highwater:>10} {shown_lag:>8}"
        )
    lines.append(f"total lag: {total}")
    return "\n".join(lines)


def _problem(exc: BaseException) -> str:
    return one_line(f"{type(exc).__name__}: {exc}", 200)


async def gather_status(settings: Settings, url: str) -> tuple[dict[str, Any] | str, BrokerView | str]:
    """The worker's ``/status`` and the broker's view, each replaced by why it failed when it did."""

    async def worker() -> dict[str, Any] | str:
        try:
            return await fetch_worker_status(url)
        except Exception as exc:  # unreachable, refused, not guardq: say so and show the broker anyway
            return _problem(exc)

    async def broker() -> BrokerView | str:
        try:
            return await asyncio.wait_for(broker_view(settings), timeout=30)
        except Exception as exc:
            return _problem(exc)

    answered, viewed = await asyncio.gather(worker(), broker())
    return answered, viewed


def as_json(url: str, worker: dict[str, Any] | str, broker: BrokerView | str) -> dict[str, Any]:
    """The same as ``render``, as a JSON-ready object."""
    broker_part: dict[str, Any] = (
        {"error": broker}
        if isinstance(broker, str)
        else {
            "dead_letters": broker.dead_letters,
            "partitions": [
                {
                    "topic": p.topic,
                    "partition": p.partition,
                    "committed": p.committed,
                    "highwater": p.highwater,
                    "lag": p.lag,
                }
                for p in broker.partitions
            ],
        }
    )
    return {
        "url": url,
        "worker": worker if not isinstance(worker, str) else {"error": worker},
        "broker": broker_part,
    }
