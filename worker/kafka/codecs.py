"""Kafka's compression codecs with a cap on what one batch may inflate to.

Producers compress record batches with gzip, snappy, lz4 or zstd (aiokafka's codec extras bring them all,
through cramjam). A batch of 1 MiB can inflate to gigabytes, and aiokafka decompresses without an output
cap, so one hostile batch could exhaust a worker's memory. ``capped_decoders`` bounds every codec: gzip
is inflated incrementally, snappy's lengths are read before inflating, lz4 and zstd inflate into a buffer
that grows only up to the cap. ``install_inflation_cap`` puts these decoders where aiokafka's record
readers look them up (its C and pure-Python readers bind the codec functions at import), so the fetch
path and guardq's own batch reader (``worker.kafka.batches``) share one rule.
"""

from __future__ import annotations

import importlib
import struct
import zlib
from collections.abc import Callable
from typing import Final

import cramjam

Decoder = Callable[[bytes], bytes]

# Batches rarely inflate past a few MiB; a cap well above that keeps legitimate batches whole.
DEFAULT_INFLATE_CAP_BYTES: Final = 64 * 1024 * 1024
_XERIAL_HEADER: Final = b"\x82SNAPPY\x00"
_XERIAL_HEADER_BYTES: Final = 16
# First guess for lz4/zstd output, as a multiple of the input: typical text compresses 3-10x.
_FIRST_GUESS_RATIO: Final = 16
_GROWTH: Final = 4

# aiokafka's record readers (C and pure Python, both batch formats) that bind the codec functions.
_AIOKAFKA_READERS: Final = (
    "aiokafka.record.default_records",
    "aiokafka.record.legacy_records",
    "aiokafka.record._crecords.default_records",
    "aiokafka.record._crecords.legacy_records",
)


class InflationCapExceeded(ValueError):
    """A compressed batch would inflate past the cap: it is treated as undecodable, never inflated."""


class CorruptCompression(ValueError):
    """The compressed bytes are not valid for their codec."""


def gzip_decode(data: bytes, cap: int) -> bytes:
    """Inflate gzip (one or more members), never holding more than ``cap`` bytes of output."""
    try:
        return _gzip_decode(data, cap)
    except zlib.error as exc:
        raise CorruptCompression(f"gzip: {exc}") from None


def _gzip_decode(data: bytes, cap: int) -> bytes:
    out = bytearray()
    remaining = memoryview(data)
    while remaining:
        inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)  # 32: gzip or zlib header
        out += inflater.decompress(remaining, cap + 1 - len(out))
        if len(out) > cap or inflater.unconsumed_tail:
            raise InflationCapExceeded(f"gzip batch inflates past {cap} bytes")
        if not inflater.eof:
            raise ValueError("gzip batch is truncated")
        remaining = memoryview(inflater.unused_data)
    return bytes(out)


def snappy_decode(data: bytes, cap: int) -> bytes:
    """Snappy, raw or in the xerial framing Java clients write; each block's length is checked first."""
    if not data.startswith(_XERIAL_HEADER):
        return _snappy_block(data, cap)
    out = bytearray()
    view = memoryview(data)[_XERIAL_HEADER_BYTES:]
    while view:
        if len(view) < 4:
            raise ValueError("snappy frame is truncated")
        (size,) = struct.unpack_from(">i", view)
        if size < 0 or size > len(view) - 4:
            raise ValueError("snappy frame has a bad block length")
        out += _snappy_block(bytes(view[4 : 4 + size]), cap - len(out))
        view = view[4 + size :]
    return bytes(out)


def _snappy_block(block: bytes, cap: int) -> bytes:
    try:
        if cramjam.snappy.decompress_raw_len(block) > cap:
            raise InflationCapExceeded(f"snappy batch inflates past {cap} bytes")
        return bytes(cramjam.snappy.decompress_raw(block))
    except cramjam.DecompressionError as exc:
        raise CorruptCompression(f"snappy: {exc}") from None


def _into_growing_buffer(decompress_into: Callable[[bytes, bytearray], int], data: bytes, cap: int) -> bytes:
    """Inflate into a buffer that starts near the likely size and grows, but never past ``cap``: cramjam
    refuses (rather than grows) when its output does not fit, so memory stays bounded by the buffer."""
    size = min(cap, max(64 * 1024, len(data) * _FIRST_GUESS_RATIO))
    while True:
        buffer = bytearray(size)
        try:
            written = decompress_into(data, buffer)
        except cramjam.DecompressionError as exc:
            if "whole buffer" not in str(exc):
                raise CorruptCompression(str(exc)) from None
            if size >= cap:
                raise InflationCapExceeded(f"batch inflates past {cap} bytes") from None
            size = min(cap, size * _GROWTH)
            continue
        return bytes(memoryview(buffer)[:written])


def lz4_decode(data: bytes, cap: int) -> bytes:
    """lz4 frame format (what Kafka clients write)."""
    return _into_growing_buffer(cramjam.lz4.decompress_into, data, cap)


def zstd_decode(data: bytes, cap: int) -> bytes:
    """zstd frames."""
    return _into_growing_buffer(cramjam.zstd.decompress_into, data, cap)


def capped_decoders(cap: int) -> dict[str, Decoder]:
    """The four codecs' decoders bound to ``cap``, by the names aiokafka's readers use."""
    return {
        "gzip_decode": lambda data: gzip_decode(bytes(data), cap),
        "snappy_decode": lambda data: snappy_decode(bytes(data), cap),
        "lz4_decode": lambda data: lz4_decode(bytes(data), cap),
        "zstd_decode": lambda data: zstd_decode(bytes(data), cap),
    }


def install_inflation_cap(cap: int = DEFAULT_INFLATE_CAP_BYTES) -> list[str]:
    """Make aiokafka's record readers use the capped decoders; returns the modules changed. Idempotent:
    the last call's cap applies. A reader that is missing (no C extension built) is skipped."""
    decoders = capped_decoders(cap)
    changed = []
    for name in _AIOKAFKA_READERS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for attribute, decoder in decoders.items():
            if hasattr(module, attribute):
                setattr(module, attribute, decoder)
        changed.append(name)
    return changed
