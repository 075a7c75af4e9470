"""Reading Kafka record batches (format v2) when aiokafka cannot: guardq's own, tolerant reader.

aiokafka decodes a fetched batch as a whole; one record it cannot decode (a header name that is not UTF-8,
an unknown codec, a bad CRC, a batch that would inflate past the cap) fails the fetch of its partition,
again on every retry. The fetch loop then reads that stretch of the partition with this module instead:

- a batch that decodes is returned record by record; a record that aiokafka would choke on (a header
  name that is not UTF-8) comes back as ``Undecodable`` with its key, value and readable headers, and
  the records around it come back as ordinary ``ConsumerRecord`` objects;
- a batch that does not decode at all (CRC, codec, cap, truncated or malformed bytes) comes back as one
  ``Undecodable`` for its whole offset range, so the loop can dead-letter it and move past it.

Pure code, no I/O. Layouts: https://kafka.apache.org/documentation/#recordbatch
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from aiokafka.record.util import calc_crc32c
from aiokafka.structs import ConsumerRecord

from worker.kafka.codecs import capped_decoders

# baseOffset int64, batchLength int32: the part of every batch (and legacy message) before its length.
_LOG_OVERHEAD: Final = 12
# The v2 batch header after the length: leader epoch, magic, crc, attributes, lastOffsetDelta,
# baseTimestamp, maxTimestamp, producerId, producerEpoch, baseSequence, record count.
_HEADER: Final = struct.Struct(">iBIhiqqqhii")
_MAGIC_AT: Final = 16  # the magic byte sits here in every format
_CRC_FROM: Final = _LOG_OVERHEAD + 9  # the CRC covers everything from the attributes on
_CODECS: Final = {1: "gzip_decode", 2: "snappy_decode", 3: "lz4_decode", 4: "zstd_decode"}
_CONTROL_BIT: Final = 0x20
_LOG_APPEND_TIME_BIT: Final = 0x08


@dataclass
class Undecodable(ConsumerRecord[bytes, bytes]):  # type: ignore[misc]
    """A record (or, when ``last_offset`` > ``offset``, a whole batch) that could not be decoded: what
    could be read is kept (key, value, headers) and ``problem`` says why it is unusable."""

    problem: str = ""
    last_offset: int = -1


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    """A zigzag varint at ``pos``: (value, position after it)."""
    shift = 0
    raw = 0
    while True:
        if pos >= len(data):
            raise ValueError("record is truncated inside a varint")
        byte = data[pos]
        pos += 1
        raw |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (raw >> 1) ^ -(raw & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("varint is longer than 10 bytes")


def _bytes(data: memoryview, pos: int) -> tuple[bytes | None, int]:
    length, pos = _varint(data, pos)
    if length < 0:
        return None, pos
    if pos + length > len(data):
        raise ValueError("record is truncated inside a field")
    return bytes(data[pos : pos + length]), pos + length


@dataclass(frozen=True)
class _Batch:
    base_offset: int
    last_offset: int
    attributes: int
    base_timestamp: int
    max_timestamp: int
    count: int
    crc: int
    body: memoryview  # the records section, still compressed


def read_batches(
    data: bytes, topic: str, partition: int, *, from_offset: int, inflate_cap: int
) -> Iterator[ConsumerRecord[bytes, bytes]]:
    """Every record at or after ``from_offset`` in the fetched bytes ``data``: ``ConsumerRecord`` for
    those that decode, ``Undecodable`` for the rest (see the module docstring). Control batches
    (transaction markers) yield nothing; a batch cut short at the end of ``data`` is left for the next
    fetch."""
    view = memoryview(data)
    pos = 0
    while len(view) - pos >= _LOG_OVERHEAD:
        base_offset, length = struct.unpack_from(">qi", view, pos)
        end = pos + _LOG_OVERHEAD + length
        if length < 0 or end > len(view):
            return  # the fetch's size limit cut this batch: it comes whole in the next fetch
        chunk = view[pos:end]
        pos = end
        yield from _records_of(chunk, base_offset, topic, partition, from_offset, inflate_cap)


def _records_of(
    chunk: memoryview, base_offset: int, topic: str, partition: int, from_offset: int, cap: int
) -> Iterator[ConsumerRecord[bytes, bytes]]:
    magic = chunk[_MAGIC_AT] if len(chunk) > _MAGIC_AT else -1
    if magic != 2:
        # A legacy message (v0/v1): its offset is its last one, also for a compressed wrapper.
        if base_offset >= from_offset:
            yield _whole(topic, partition, base_offset, base_offset, f"message format v{magic} not readable")
        return
    try:
        batch = _header(chunk, base_offset)
    except (ValueError, struct.error) as exc:
        yield _whole(topic, partition, base_offset, base_offset, f"batch header: {exc}")
        return
    if batch.last_offset < from_offset or batch.attributes & _CONTROL_BIT:
        return
    try:
        if calc_crc32c(bytes(chunk[_CRC_FROM:])) != batch.crc:
            raise ValueError("CRC mismatch")
        records = _decode_records(batch, topic, partition, cap)
    except (ValueError, struct.error, KeyError) as exc:  # codec errors are ValueErrors too
        first = max(batch.base_offset, from_offset)
        detail = f"{type(exc).__name__}: {exc}"
        yield _whole(
            topic, partition, first, batch.last_offset, f"batch of {batch.count} record(s): {detail}"
        )
        return
    yield from (record for record in records if record.offset >= from_offset)


def _header(chunk: memoryview, base_offset: int) -> _Batch:
    if len(chunk) < _LOG_OVERHEAD + _HEADER.size:
        raise ValueError("shorter than a batch header")
    fields = _HEADER.unpack_from(chunk, _LOG_OVERHEAD)
    _, _, crc, attributes, last_delta, base_ts, max_ts, _, _, _, count = fields
    if last_delta < 0 or count < 0:
        raise ValueError("negative record count")
    body = chunk[_LOG_OVERHEAD + _HEADER.size :]
    return _Batch(base_offset, base_offset + last_delta, attributes, base_ts, max_ts, count, crc, body)


def _decode_records(
    batch: _Batch, topic: str, partition: int, cap: int
) -> list[ConsumerRecord[bytes, bytes]]:
    codec = batch.attributes & 0x07
    if codec and codec not in _CODECS:
        raise ValueError(f"unknown compression codec {codec}")
    body = memoryview(capped_decoders(cap)[_CODECS[codec]](bytes(batch.body))) if codec else batch.body
    records: list[ConsumerRecord[bytes, bytes]] = []
    pos = 0
    for _ in range(batch.count):
        record, pos = _record(body, pos, batch, topic, partition)
        records.append(record)
    return records


def _record(
    body: memoryview, pos: int, batch: _Batch, topic: str, partition: int
) -> tuple[ConsumerRecord[bytes, bytes], int]:
    length, pos = _varint(body, pos)
    end = pos + length
    if length < 0 or end > len(body):
        raise ValueError("record is truncated")
    pos += 1  # record attributes: unused
    ts_delta, pos = _varint(body, pos)
    offset_delta, pos = _varint(body, pos)
    key, pos = _bytes(body, pos)
    value, pos = _bytes(body, pos)
    count, pos = _varint(body, pos)
    headers: list[tuple[str, bytes]] = []
    problems: list[str] = []
    for _ in range(max(0, count)):
        raw_name, pos = _bytes(body, pos)
        header_value, pos = _bytes(body, pos)
        try:
            name = (raw_name or b"").decode("utf-8")
        except UnicodeDecodeError:
            name = (raw_name or b"").decode("utf-8", errors="backslashreplace")
            problems.append(f"header name {name[:60]!r} is not UTF-8")
        headers.append((name, header_value))  # type: ignore[arg-type]  # a header may have no value
    if pos != end:
        raise ValueError("record length does not match its fields")
    log_append = batch.attributes & _LOG_APPEND_TIME_BIT
    timestamp = batch.max_timestamp if log_append else batch.base_timestamp + ts_delta
    fields = (
        topic,
        partition,
        batch.base_offset + offset_delta,
        timestamp,
        1 if log_append else 0,
        key,
        value,
        None,
        len(key) if key is not None else -1,
        len(value) if value is not None else -1,
        headers,
    )
    if problems:
        return Undecodable(*fields, problem="; ".join(problems)), end
    return ConsumerRecord(*fields), end


def _whole(topic: str, partition: int, first: int, last: int, problem: str) -> Undecodable:
    """An ``Undecodable`` standing for offsets ``first``..``last``, none of them readable."""
    return Undecodable(topic, partition, first, -1, 0, None, None, None, -1, -1, [], problem, last)
