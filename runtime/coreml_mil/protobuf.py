"""The protobuf wire format, decoded by hand (no ``protobuf`` package): varints, the fields of one message, packed
repeated varints and map entries. Enough to walk Core ML's ``Model`` / MIL ``Program`` messages; what the field
numbers mean is program.py's business.

Field numbers used by program.py come from coremltools' MIL.proto / Model.proto / FeatureTypes.proto (coremltools
9.0); tests/test_coreml.py decodes packages with coremltools' own generated classes and compares."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import MilError


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The base-128 varint at ``pos``: (value, position after it)."""
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise MilError("malformed protobuf: varint too long")


def fields(buf: bytes) -> Iterable[tuple[int, int, Any]]:
    """(field number, wire type, value) for every field of one message; length-delimited values stay bytes."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = read_varint(buf, pos)
        elif wt == 1:
            val, pos = buf[pos : pos + 8], pos + 8
        elif wt == 2:
            n, pos = read_varint(buf, pos)
            val, pos = buf[pos : pos + n], pos + n
        elif wt == 5:
            val, pos = buf[pos : pos + 4], pos + 4
        else:
            raise MilError(f"malformed protobuf: unsupported wire type {wt}")
        if pos > end:
            raise MilError("malformed protobuf: truncated message")
        yield num, wt, val


def signed64(v: int) -> int:
    """A varint read as int64 (two's complement; negative int32/int64 values are sign-extended to 10 bytes)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def packed_varints(wt: int, val: Any) -> list[int]:
    """A repeated int field, packed (wire type 2) or not (one varint), as signed ints."""
    if wt == 0:
        return [signed64(val)]
    out, pos = [], 0
    while pos < len(val):
        v, pos = read_varint(val, pos)
        out.append(signed64(v))
    return out


def map_entry(buf: bytes) -> tuple[str, bytes]:
    """A ``map<string, message>`` entry: (key, the value's undecoded bytes)."""
    key, value = "", b""
    for num, _, val in fields(buf):
        if num == 1:
            key = val.decode()
        elif num == 2:
            value = val
    return key, value
