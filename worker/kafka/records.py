"""What a fetched record costs the buffer, and which offset the commit watermark tracks for it."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord

# What a fetched record costs in memory beyond its bytes: the ConsumerRecord, and per header a tuple, a
# str and a bytes object. Counted, so a record made of many tiny headers trips backpressure too.
RECORD_OVERHEAD_BYTES = 400
HEADER_OVERHEAD_BYTES = 160


def record_size(record: ConsumerRecord) -> int:
    """What a fetched record is counted as in the buffered-bytes cap (see ``HEADER_OVERHEAD_BYTES``)."""
    headers = record.headers or ()
    header_bytes = sum(len(name) + len(value or b"") for name, value in headers)
    return int(
        RECORD_OVERHEAD_BYTES
        + max(0, record.serialized_value_size)
        + max(0, record.serialized_key_size)
        + header_bytes
        + HEADER_OVERHEAD_BYTES * len(headers)
    )


def tracked_offset(record: ConsumerRecord) -> int:
    """The offset the watermark tracks for a record: its own, or the last of an undecodable batch."""
    return max(int(record.offset), int(getattr(record, "last_offset", -1)))
