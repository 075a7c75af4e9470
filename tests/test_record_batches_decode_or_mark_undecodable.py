"""guardq's own record-batch reader and the inflation cap: every codec decodes, what cannot be decoded
comes back as ``Undecodable`` (one record, or a whole batch's range) while its neighbours come back whole,
and no codec inflates past the cap. Pure code: batches are built byte by byte (``tests.rawbatches``)."""

from __future__ import annotations

import struct

import pytest
from aiokafka.structs import ConsumerRecord

from tests.rawbatches import CODECS, RawRecord, encode_batch, gzip_stream
from worker.kafka import codecs
from worker.kafka.batches import Undecodable, read_batches

CAP = 4 * 1024 * 1024


def with_offset(batch: bytes, base_offset: int) -> bytes:
    """``batch`` as the broker stores it: at ``base_offset``."""
    return struct.pack(">q", base_offset) + batch[8:]


def read(data: bytes, from_offset: int = 0) -> list[ConsumerRecord]:
    return list(read_batches(data, "t", 0, from_offset=from_offset, inflate_cap=CAP))


@pytest.mark.parametrize("codec_name", list(CODECS))
def test_every_codec_decodes_keys_values_and_headers(codec_name: str) -> None:
    records = [
        RawRecord(b'{"id":"a"}', key=b"a", headers=[(b"traceparent", b"00-x"), (b"empty", None)]),
        RawRecord(None, key=None),
        RawRecord(b"v" * 10_000, key=b"c"),
    ]
    got = read(with_offset(encode_batch(records, codec_name=codec_name), 40))
    assert [type(record) for record in got] == [ConsumerRecord] * 3
    assert [record.offset for record in got] == [40, 41, 42]
    assert [(record.key, record.value) for record in got] == [
        (b"a", b'{"id":"a"}'),
        (None, None),
        (b"c", b"v" * 10_000),
    ]
    assert got[0].headers == [("traceparent", b"00-x"), ("empty", None)]
    assert got[2].serialized_value_size == 10_000 and got[1].serialized_value_size == -1


def test_a_header_name_that_is_not_utf8_marks_only_its_record() -> None:
    records = [
        RawRecord(b"1"),
        RawRecord(b"2", key=b"k2", headers=[(b"\xff\xfe", b"v"), (b"ok", b"w")]),
        RawRecord(b"3"),
    ]
    got = read(encode_batch(records, codec_name="gzip"))
    assert [type(record).__name__ for record in got] == ["ConsumerRecord", "Undecodable", "ConsumerRecord"]
    bad = got[1]
    assert isinstance(bad, Undecodable)
    assert (bad.offset, bad.key, bad.value) == (1, b"k2", b"2")
    assert "not UTF-8" in bad.problem
    assert ("ok", b"w") in bad.headers  # what could be read is kept


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"break_crc": True}, "CRC"),
        ({"codec_id": 5}, "unknown compression codec 5"),
        ({"codec_name": "gzip", "compressed": b"not gzip at all"}, "CorruptCompression"),
        ({"codec_name": "zstd", "compressed": b"\x28\xb5\x2f\xfd garbage"}, "CorruptCompression"),
        (
            {"codec_name": "gzip", "compressed": gzip_stream(b"\0" * (1 << 20) for _ in range(8))},
            "inflates past",
        ),
    ],
    ids=["crc", "unknown-codec", "corrupt-gzip", "corrupt-zstd", "gzip-bomb"],
)
def test_a_batch_that_does_not_decode_is_one_undecodable_range(
    kwargs: dict[str, object], problem: str
) -> None:
    records = [RawRecord(b"a"), RawRecord(b"b"), RawRecord(b"c")]
    bad = with_offset(encode_batch(records, **kwargs), 10)  # type: ignore[arg-type]
    good = with_offset(encode_batch([RawRecord(b"after")]), 13)
    got = read(bad + good)
    assert isinstance(got[0], Undecodable)
    assert (got[0].offset, got[0].last_offset, got[0].key, got[0].value) == (10, 12, None, None)
    assert problem in got[0].problem
    assert [(type(r), r.offset, r.value) for r in got[1:]] == [(ConsumerRecord, 13, b"after")]


def test_records_before_from_offset_are_skipped_and_a_cut_batch_waits_for_the_next_fetch() -> None:
    first = with_offset(encode_batch([RawRecord(b"a"), RawRecord(b"b"), RawRecord(b"c")]), 0)
    second = with_offset(encode_batch([RawRecord(b"d")]), 3)
    got = read(first + second[:-5], from_offset=1)
    assert [record.value for record in got] == [b"b", b"c"]
    # A range partly before from_offset starts at from_offset.
    broken = with_offset(encode_batch([RawRecord(b"a"), RawRecord(b"b")], break_crc=True), 0)
    (only,) = read(broken, from_offset=1)
    assert isinstance(only, Undecodable) and (only.offset, only.last_offset) == (1, 1)


def test_control_batches_yield_nothing() -> None:
    batch = bytearray(with_offset(encode_batch([RawRecord(b"\x00\x00\x00\x00", key=b"\x00\x00\x00\x00")]), 0))
    batch[21:23] = struct.pack(">h", 0x20)  # control bit; recompute the CRC over attributes..end
    from aiokafka.record.util import calc_crc32c

    batch[17:21] = struct.pack(">I", calc_crc32c(bytes(batch[21:])))
    assert read(bytes(batch)) == []


def test_a_legacy_message_is_one_undecodable_offset() -> None:
    legacy = struct.pack(">qi", 7, 14) + struct.pack(">iBB", 0, 1, 0) + b"\x00" * 8
    (only,) = read(legacy)
    assert isinstance(only, Undecodable) and (only.offset, only.last_offset) == (7, 7)


@pytest.mark.parametrize("codec_name", ["gzip", "snappy", "lz4", "zstd"])
def test_no_codec_inflates_past_the_cap(codec_name: str) -> None:
    import aiokafka.codec as kafka_codec

    data = b"z" * 3_000_000
    compressed = getattr(kafka_codec, f"{codec_name}_encode")(data)
    decode = getattr(codecs, f"{codec_name}_decode")
    assert decode(compressed, len(data)) == data
    with pytest.raises(codecs.InflationCapExceeded):
        decode(compressed, len(data) - 1)


def test_the_cap_reaches_aiokafkas_own_reader() -> None:
    from aiokafka.record.memory_records import MemoryRecords

    codecs.install_inflation_cap(1000)
    try:
        batch = encode_batch([RawRecord(b"x" * 5000)], codec_name="gzip")
        with pytest.raises(codecs.InflationCapExceeded):
            list(MemoryRecords(batch).next_batch())
    finally:
        codecs.install_inflation_cap()
