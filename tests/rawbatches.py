"""Hand-built Kafka record batches, sent to the broker as they are: the test side of ``worker.kafka.batches``.

Real producers (librdkafka, Java clients) can write what aiokafka's producer refuses to: header names that
are not UTF-8, codecs that inflate a thousandfold. These helpers write record batches (format v2) byte by
byte, with any header bytes, any codec id, an optional broken CRC, and send them with one ProduceRequest
through aiokafka's client, so the worker meets them exactly as it would from such a producer.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import aiokafka.codec as codec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import for_code
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def _varint(value: int) -> bytes:
    raw = (value << 1) ^ (value >> 63)  # zigzag
    out = bytearray()
    while True:
        byte = raw & 0x7F
        raw >>= 7
        if raw:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(data: bytes | None) -> bytes:
    return _varint(-1) if data is None else _varint(len(data)) + data


@dataclass(frozen=True)
class RawRecord:
    """One record: key, value and headers as raw bytes (names included)."""

    value: bytes | None
    key: bytes | None = None
    headers: Sequence[tuple[bytes, bytes | None]] = field(default_factory=tuple)


def encode_record(record: RawRecord, offset_delta: int) -> bytes:
    body = b"\x00" + _varint(0) + _varint(offset_delta) + _field(record.key) + _field(record.value)
    body += _varint(len(record.headers))
    for name, value in record.headers:
        body += _field(name) + _field(value)
    return _varint(len(body)) + body


def gzip_stream(chunks: Iterable[bytes]) -> bytes:
    """A gzip member of ``chunks`` compressed as they come (for bombs far larger than memory allows)."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    return b"".join(deflater.compress(chunk) for chunk in chunks) + deflater.flush()


def encode_batch(
    records: Sequence[RawRecord],
    *,
    codec_name: str = "none",
    codec_id: int | None = None,
    compressed: bytes | None = None,
    break_crc: bool = False,
) -> bytes:
    """A v2 record batch of ``records`` (base offset 0: the broker assigns offsets). ``compressed``
    replaces the compressed records section (a bomb); ``codec_id`` overrides the codec bits."""
    section = b"".join(encode_record(record, index) for index, record in enumerate(records))
    if compressed is not None:
        section = compressed
    elif codec_name != "none":
        section = getattr(codec, f"{codec_name}_encode")(section)
    attributes = codec_id if codec_id is not None else CODECS[codec_name]
    now_ms = int(time.time() * 1000)
    after_crc = struct.pack(
        ">hiqqqhii", attributes, len(records) - 1, now_ms, now_ms, -1, -1, -1, len(records)
    )
    after_crc += section
    crc = calc_crc32c(after_crc) ^ (0xFFFFFFFF if break_crc else 0)
    after_length = struct.pack(">iBI", -1, 2, crc) + after_crc
    return struct.pack(">qi", 0, len(after_length)) + after_length


async def send_batch(producer: AIOKafkaProducer, topic: str, partition: int, batch: bytes) -> None:
    """Append ``batch`` to ``topic``/``partition`` as it is (acks=all); raises the broker's error."""
    client = producer.client
    await client.force_metadata_update()
    leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
    request = ProduceRequest(None, -1, 30_000, [(topic, [(partition, batch)])])
    response = await client.send(leader, request)
    for _, partitions in response.topics:
        for _, error_code, *_ in partitions:
            if error_code:
                raise for_code(error_code)(f"broker refused the batch for {topic}/{partition}")
