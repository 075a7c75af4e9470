"""Two small rules with big consequences: a record's buffered cost counts its headers (a megabyte of tiny
headers must trip backpressure like a megabyte of value), and what `guardq dlq list` prints of a dead
letter cannot drive the operator's terminal."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord

from worker.failures.listing import DeadLetter, shown, table_row
from worker.kafka.batches import Undecodable
from worker.kafka.records import HEADER_OVERHEAD_BYTES, record_size, tracked_offset


def record(value: bytes, headers: list[tuple[str, bytes]]) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("t", 0, 5, 0, 0, None, value, None, -1, len(value), headers)


def test_a_record_of_tiny_headers_costs_as_much_as_its_python_objects() -> None:
    plain = record_size(record(b"x" * 1_000_000, []))
    headers = [("h", b"")] * 333_000  # about 1 MB on the wire (3 bytes a header)
    heavy = record_size(record(b"", headers))
    assert heavy >= 333_000 * HEADER_OVERHEAD_BYTES > 50 * 1_000_000
    assert plain < heavy


def test_an_undecodable_batch_is_tracked_by_its_last_offset() -> None:
    whole = Undecodable("t", 0, 10, -1, 0, None, None, None, -1, -1, [], "CRC mismatch", 19)
    assert tracked_offset(whole) == 19
    assert tracked_offset(record(b"v", [])) == 5


def test_control_and_bidi_characters_are_shown_escaped() -> None:
    assert shown("ok id-1") == "ok id-1"
    assert shown("\x1b[2J\x1b]0;pwned\x07") == "\\u001b[2J\\u001b]0;pwned\\u0007"
    assert shown("abc\u202egnp.exe\n") == "abc\\u202egnp.exe\\u000a"
    letter = DeadLetter(0, 1, 0, b"\x1b[31mred", b"{}", None, problem="bad\x1b[0m")
    assert "\x1b" not in table_row(letter)  # the line `guardq dlq list` prints
