"""Reading one partition past what aiokafka cannot decode: a raw fetch, decoded by ``worker.kafka.batches``.

When ``getmany`` fails, aiokafka gives no way past the record that made it fail: every retry fetches
and fails on the same batch. The fetch loop then asks ``read_partition`` for the records from the
partition's next offset: one Fetch request through the consumer's own client (so it uses the same
connections, security settings and metadata), its record bytes decoded by guardq's tolerant reader.
What decodes is moderated as usual; what does not comes back as ``Undecodable`` and is dead-lettered;
either way the loop then seeks past it.

This is the one module that reaches into aiokafka's client (``consumer._client``), which aiokafka has
kept stable across the versions pyproject.toml allows; a test sends real malformed batches through a
real broker to catch a change.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    ConsumerStoppedError,
    GroupAuthorizationFailedError,
    LeaderNotAvailableError,
    TopicAuthorizationFailedError,
    for_code,
)
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.structs import ConsumerRecord

from worker.kafka.batches import read_batches

# Errors of a fetch that are configuration (or the end of the consumer), not data: the worker stops on them.
FATAL_FETCH_ERRORS = (
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    ConsumerStoppedError,
)
READ_UNCOMMITTED = 0
# How long the broker may wait for data. Not 0: some brokers (tansu) answer a zero wait with nothing.
RAW_FETCH_WAIT_MS = 100


async def fetch_raw(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, *, max_bytes: int) -> bytes:
    """The record bytes the partition's leader returns from ``offset`` (at least one whole batch, as
    brokers send one even when it exceeds ``max_bytes``). Raises a ``KafkaError`` when it cannot."""
    client = consumer._client
    leader = client.cluster.leader_for_partition(tp)
    if leader is None or leader == -1:
        await client.force_metadata_update()
        leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader == -1:
            raise LeaderNotAvailableError(f"no leader known for {tp.topic}/{tp.partition}")
    request = FetchRequest(
        RAW_FETCH_WAIT_MS, 1, max_bytes, READ_UNCOMMITTED, [(tp.topic, [(tp.partition, offset, max_bytes)])]
    )
    response = await client.send(leader, request)
    for _, partitions in response.topics:
        for _, error_code, _, *part_data in partitions:
            if error_code:
                raise for_code(error_code)(f"raw fetch of {tp.topic}/{tp.partition}@{offset}")
            return bytes(part_data[-1] or b"")
    return b""  # nothing at or after ``offset`` yet


async def read_partition(
    consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, *, max_bytes: int, inflate_cap: int
) -> list[ConsumerRecord[bytes, bytes]]:
    """The records of ``tp`` from ``offset`` in one fetch, decoded record by record (``Undecodable`` for
    what cannot be); empty when there is nothing at or after ``offset`` yet."""
    data = await fetch_raw(consumer, tp, offset, max_bytes=max_bytes)
    return list(read_batches(data, tp.topic, tp.partition, from_offset=offset, inflate_cap=inflate_cap))


async def first_offset(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int:
    """Where an assignment of ``tp`` with nothing dispatched yet starts: the group's committed offset, or
    the start of the log (guardq reads from the earliest offset)."""
    committed = await consumer.committed(tp)
    if committed is not None:
        return int(committed)
    return int((await consumer.beginning_offsets([tp]))[tp])
