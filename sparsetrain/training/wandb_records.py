"""Read the records of a W&B run file (`run-ID.wandb`) offline, with wandb's own protobuf schema.

A `.wandb` file is a LevelDB-style log (https://github.com/google/leveldb/blob/main/doc/log_format.md)
after a 7-byte file header (`:W&B`, magic 0xBEE1 little-endian, version byte):

    block  := chunk* padding?          32768-byte blocks; a chunk never crosses a block boundary
    chunk  := crc32: uint32 LE         zlib CRC-32 of the type byte then the data
              length: uint16 LE
              type: uint8              1 FULL, 2 FIRST, 3 MIDDLE, 4 LAST
              data: uint8[length]

Each FULL chunk, or FIRST..MIDDLE*..LAST sequence, holds one serialized
`wandb.proto.wandb_internal_pb2.Record`. The installed wandb (0.31) writes these files from its Go
service and no longer ships a Python reader, so this module decodes the framing and lets wandb's
own `Record` message parse each payload. A process killed while writing leaves a torn or
unchecksummed tail: reading stops there, as the writer's own reader does.
"""

from __future__ import annotations

import json
import math
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HEADER = b":W&B"
FILE_HEADER_BYTES = 7  # ident (4) + magic (2) + version (1)
BLOCK_BYTES = 32768
CHUNK_HEADER_BYTES = 7  # crc32 (4) + length (2) + type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> Iterator[bytes]:
    """Record payloads of a whole `.wandb` file's bytes, up to the first torn or corrupt chunk."""
    pos, parts = FILE_HEADER_BYTES, None
    while pos + CHUNK_HEADER_BYTES <= len(data):
        left_in_block = BLOCK_BYTES - pos % BLOCK_BYTES
        if left_in_block < CHUNK_HEADER_BYTES:  # block trailer: zero padding
            pos += left_in_block
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if crc == 0 and length == 0 and kind == 0:  # zero-filled rest of a block
            pos += left_in_block
            continue
        body = data[pos + CHUNK_HEADER_BYTES: pos + CHUNK_HEADER_BYTES + length]
        if len(body) < length or zlib.crc32(body, zlib.crc32(bytes([kind]))) != crc:
            return  # torn tail of a killed writer
        pos += CHUNK_HEADER_BYTES + length
        if kind == FULL:
            yield body
        elif kind == FIRST:
            parts = [body]
        elif kind in (MIDDLE, LAST) and parts is not None:
            parts.append(body)
            if kind == LAST:
                yield b"".join(parts)
                parts = None
        else:
            return  # unknown chunk type, or a continuation without its start


def read_records(path: Path) -> Iterator[Any]:
    """The complete `wandb_internal_pb2.Record` messages of a `.wandb` file, in write order.

    Raises:
      ValueError: the file does not start with the W&B header.
    """
    from wandb.proto import wandb_internal_pb2  # imports all of wandb (~1-2 s): only when reading

    data = Path(path).read_bytes()
    if data[:len(HEADER)] != HEADER:
        raise ValueError(f"{path}: not a W&B run file (header {data[:FILE_HEADER_BYTES]!r})")
    for payload in _payloads(data):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def history_rows(path: Path) -> list[dict]:
    """The history rows of a `.wandb` file: one dict per `history` record, keys as logged (nested
    keys joined with '/'), values decoded from JSON, plus `_step` (the W&B step); W&B's own
    `_runtime` and `_timestamp` are left out."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            if key not in ("_runtime", "_timestamp"):
                row[key] = json.loads(item.value_json)
        if "_step" not in row and record.history.HasField("step"):
            row["_step"] = record.history.step.num
        rows.append(row)
    return rows


def wait_for_exit_record(path: Path, timeout_s: float = 30.0, poll_s: float = 0.02) -> bool:
    """Wait until `path` ends with the run's `exit` record. W&B's service buffers the file and
    writes the last rows shortly after `run.finish()` returns; a kill before then would lose
    them. Returns False if the record did not appear within `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        if Path(path).is_file() and any(r.WhichOneof("record_type") == "exit" for r in read_records(path)):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)


def same_value(a, b) -> bool:
    """Equal as logged: numbers by value (an int read back as a float is the same), NaN equals NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b
