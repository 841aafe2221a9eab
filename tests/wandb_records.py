"""Read what W&B wrote offline: the `run-*.wandb` record stream.

wandb 0.31 no longer ships a reader. The file is a 7-byte header followed by
LevelDB-log framing: 32 KiB blocks of records, each with a 7-byte header
(crc32, little-endian length, type: 1 full, 2 first, 3 middle, 4 last) and a
payload; full/first..last payloads join into one serialized `Record`.
"""

from __future__ import annotations

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

HEADER = 7
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B data file"
    out, pending, offset = [], b"", HEADER
    while offset + HEADER <= len(data):
        room = BLOCK - offset % BLOCK
        if room < HEADER:  # block trailer padding
            offset += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER])
        payload = data[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
        if kind == 0 and length == 0:
            offset += BLOCK - offset % BLOCK if offset % BLOCK else 0
            continue
        if kind in (FULL, FIRST):
            pending = payload
        else:
            pending += payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def run_file(run_dir: Path) -> Path:
    (path,) = Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")
    return path


def summary(records_: list) -> dict[str, str]:
    """The last value of every summary key (JSON-encoded strings)."""
    values: dict[str, str] = {}
    for record in records_:
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                values[item.key or "/".join(item.nested_key)] = item.value_json
    return values


def config(records_: list) -> dict[str, str]:
    values: dict[str, str] = {}
    for record in records_:
        if record.WhichOneof("record_type") == "config":
            for item in record.config.update:
                values[item.key or "/".join(item.nested_key)] = item.value_json
        if record.WhichOneof("record_type") == "run":
            for item in record.run.config.update:
                values[item.key or "/".join(item.nested_key)] = item.value_json
    return values


def artifacts(records_: list) -> list:
    return [r.artifact for r in records_ if r.WhichOneof("record_type") == "artifact"]


def history_keys(records_: list) -> set[str]:
    return {item.key or "/".join(item.nested_key) for r in records_ if r.WhichOneof("record_type") == "history" for item in r.history.item}


def history_values(records_: list, key: str) -> list[float]:
    """Every value logged for `key`, in order (one per `run.log` that held it)."""
    return [float(item.value_json) for r in records_ if r.WhichOneof("record_type") == "history"
            for item in r.history.item if (item.key or "/".join(item.nested_key)) == key]


def run_ids(records_: list) -> set[str]:
    return {r.run.run_id for r in records_ if r.WhichOneof("record_type") == "run"}
