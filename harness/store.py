"""The record store of a run folder, at any scale and for any number of ranks.

While a run computes, each rank appends to its own write-ahead shard (no two processes ever write
one file): ``records.jsonl`` for a single process, ``shards/rank-<r>.jsonl`` for rank ``r`` of a
distributed run. A record's curve is stored out of line in the shard's binary companion
(``.f64``: float64, little-endian, so nothing is rounded), referenced by ``curve_at: [offset,
length]``; curves are written and fsynced before the line that references them, so a torn binary
tail is never read. The JSON lines follow ``harness.io.RecordStore``'s rules (append + fsync per
work unit; readers never write; the resuming writer repairs a torn last line).

When a run ends, ``compact`` (rank 0 alone) merges the shards in a canonical order into
``records.parquet`` (columnar, zstd; the curves a list column, float32 where that is exact, as for
the deletion engine's curves) written atomically, and then removes the shards it merged. A crash
between the two leaves both, which the reader deduplicates by record key. ``load_frame`` /
``load_records`` read whatever is there: ``records.parquet``, the shards, and harness 0.1's
``records.jsonl`` with inline curves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harness.io import RecordStore, atomic_path, fsync_folder

PARQUET = "records.parquet"
SINGLE = "records.jsonl"
SHARDS = "shards"
KEY_COLUMNS = ("method", "metric", "image_id", "measure", "block")  # harness.io.record_key


def shard_paths(output_dir: str | os.PathLike, rank: int | None) -> Path:
    """The JSON-lines shard a process writes: ``records.jsonl`` (single process, ``rank`` None)
    or ``shards/rank-<rank>.jsonl``."""
    output_dir = Path(output_dir)
    if rank is None:
        return output_dir / SINGLE
    return output_dir / SHARDS / f"rank-{rank:03d}.jsonl"


class ShardWriter:
    """Appends records to one shard: curves to the ``.f64`` companion (fsynced), then the JSON
    lines that reference them (fsynced): one durable step per work unit."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.curves = self.path.with_suffix(".f64")
        self.lines = RecordStore(self.path)

    def append(self, records: Sequence[dict]) -> None:
        if not records:
            return
        out = []
        with self.curves.open("ab") as handle:
            torn = handle.tell() % 8  # a write cut short (a full disk): never misalign the rest
            if torn:
                handle.write(b"\0" * (8 - torn))
            offset = handle.tell() // 8
            for record in records:
                curve = record.get("curve")
                if curve is None:
                    out.append(record)
                    continue
                values = np.asarray(curve, dtype="<f8")
                handle.write(values.tobytes())
                stored = {k: v for k, v in record.items() if k != "curve"}
                stored["curve_at"] = [offset, int(values.size)]
                offset += values.size
                out.append(stored)
            handle.flush()
            os.fsync(handle.fileno())
        self.lines.append(out)


def _shards(output_dir: Path) -> list[Path]:
    folder = output_dir / SHARDS
    found = sorted(folder.glob("rank-*.jsonl")) if folder.is_dir() else []
    single = output_dir / SINGLE
    return ([single] if single.exists() else []) + found


def _shard_table(path: Path, *, curves: bool):
    """One shard as an Arrow table (curves as a ``list<float>`` column read straight from the
    binary companion, or inline ``curve`` lists of harness 0.1), or None when it is empty."""
    import pyarrow as pa

    records = RecordStore(path).load()
    if not records:
        return None
    refs, inline = [], []
    for record in records:
        refs.append(record.pop("curve_at", None))
        inline.append(record.pop("curve", None))
    rows = [_plain(r) for r in records]
    names = list(dict.fromkeys(key for row in rows for key in row))  # every record's fields
    table = pa.Table.from_pylist([{key: row.get(key) for key in names} for row in rows])
    if not curves:
        return table
    if any(ref is not None for ref in refs):
        companion = path.with_suffix(".f64")
        values = (np.fromfile(companion, dtype="<f8") if companion.exists()
                  else np.empty(0, dtype="<f8"))
        lengths = np.array([0 if ref is None else ref[1] for ref in refs], dtype=np.int64)
        starts = np.array([0 if ref is None else ref[0] for ref in refs], dtype=np.int64)
        if np.any(starts + lengths > values.size):
            raise ValueError(f"{companion} is shorter than the curves {path} references; the "
                             "run folder is damaged")
        index = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths,
                                                                     strict=True)]) \
            if lengths.sum() else np.empty(0, dtype=np.int64)
        if lengths.sum() > np.iinfo(np.int32).max:  # Arrow list offsets are int32
            raise ValueError(f"{companion}: {lengths.sum():,} curve values in one shard exceed "
                             "Arrow's list offsets (2**31 - 1); run with more ranks or smaller "
                             "curves (a larger step)")
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        mask = np.array([ref is None for ref in refs])
        column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[index]),
                                          mask=pa.array(mask))
    elif any(c is not None for c in inline):
        column = pa.array([None if c is None else np.asarray(c, dtype=np.float64)
                           for c in inline], type=pa.list_(pa.float64()))
    else:
        return table
    return table.append_column("curve", column)


def _plain(record: dict) -> dict:
    """Values Arrow can type across records: nested lists/dicts as JSON text, marked by a
    ``json:`` prefix on the column name (decoded by ``load_frame``)."""
    out = {}
    for key, value in record.items():
        if isinstance(value, list | tuple | dict):
            out[f"json:{key}"] = json.dumps(value)
        else:
            out[key] = value
    return out


def _tables(output_dir: Path, *, curves: bool) -> list:
    import pyarrow.parquet as pq

    tables = []
    if (output_dir / PARQUET).exists():
        path = output_dir / PARQUET
        names = pq.read_schema(path).names
        tables.append(pq.read_table(path, columns=[n for n in names
                                                   if curves or n != "curve"]))
    for shard in _shards(output_dir):
        table = _shard_table(shard, curves=curves)
        if table is not None:
            tables.append(table)
    return tables


def _combine(tables: list):
    import pyarrow as pa

    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


def _keys(table) -> list[tuple]:
    """Each row's record key (``harness.io.record_key``'s fields, None where a table lacks one)."""
    columns = [table.column(c).to_pylist() if c in table.column_names
               else [None] * table.num_rows for c in KEY_COLUMNS]
    return list(zip(*columns, strict=True))


def _unique(table):
    """First occurrence of each record key."""
    import pyarrow as pa

    seen, keep = set(), []
    for index, key in enumerate(_keys(table)):
        if key not in seen:
            seen.add(key)
            keep.append(index)
    if len(keep) == table.num_rows:
        return table
    return table.take(pa.array(keep, type=pa.int64()))


def load_frame(output_dir: str | os.PathLike, *, curves: bool = True) -> pd.DataFrame:
    """Every record of the run in ``output_dir`` as a frame (one row per record, first occurrence
    of each key; ``curve`` as float arrays when ``curves``: float32 from a compacted store whose
    curves are exact in float32, else float64; the same values), whatever the store: the compacted
    ``records.parquet``, write-ahead shards of any number of ranks, or harness 0.1's
    ``records.jsonl``. Never writes."""
    output_dir = Path(output_dir)
    tables = _tables(output_dir, curves=curves)
    if not tables:
        if not output_dir.is_dir():
            raise ValueError(f"{output_dir} does not exist")
        raise ValueError(f"{output_dir} holds no records ({PARQUET}, {SINGLE} or {SHARDS}/): not "
                         "a harness run folder")
    frame = _unique(_combine(tables)).to_pandas(integer_object_nulls=True)
    for column in list(frame.columns):
        if column.startswith("json:"):
            frame[column[5:]] = [json.loads(v) if isinstance(v, str) else None
                                 for v in frame[column]]
            frame = frame.drop(columns=column)
    for column in KEY_COLUMNS:
        if column not in frame:
            frame[column] = None
    return frame


def frame_records(frame: pd.DataFrame) -> list[dict]:
    """A frame's rows as record dicts, without the fields a row lacks (NaN/None from other
    records' columns; ``value`` is always there, None where undefined) and curves as lists."""
    out = []
    for row in frame.to_dict("records"):
        record = {}
        for key, value in row.items():
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, np.generic):
                value = value.item()
            if value is None or (isinstance(value, float) and np.isnan(value)):
                if key == "value":
                    record[key] = None
                continue
            record[key] = value
        out.append(record)
    return out


def load_records(output_dir: str | os.PathLike, *, curves: bool = True) -> list[dict]:
    """Every record of the run as dicts (see ``load_frame``)."""
    return frame_records(load_frame(output_dir, curves=curves))


def record_keys(output_dir: str | os.PathLike) -> set[tuple]:
    """The keys of the records already stored (what ``--resume`` need not recompute)."""
    output_dir = Path(output_dir)
    tables = _tables(output_dir, curves=False)
    keys: set[tuple] = set()
    for table in tables:
        keys |= set(_keys(table))
    return keys


def compact(output_dir: str | os.PathLike, order: Sequence[tuple] | None = None) -> Path:
    """Merge every stored record into ``records.parquet`` (atomically, zstd) in a canonical order,
    then remove the merged shards. ``order``: the record keys in their canonical order (records
    not in it follow in the order they were read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    output_dir = Path(output_dir)
    shards = _shards(output_dir)
    tables = _tables(output_dir, curves=True)
    if not tables:
        raise ValueError(f"{output_dir} holds no records to compact")
    table = _unique(_combine(tables))
    if order is not None:
        rank = {key: position for position, key in enumerate(order)}
        positions = [rank.get(key, len(rank) + i) for i, key in enumerate(_keys(table))]
        table = table.take(pa.array(np.argsort(positions, kind="stable"), type=pa.int64()))
    if "curve" in table.column_names:
        index = table.column_names.index("curve")
        curves = table.column("curve").combine_chunks()
        if not pa.types.is_float32(curves.type.value_type):
            exact = np.asarray(curves.flatten(), dtype=np.float64)
            if np.array_equal(exact.astype(np.float32).astype(np.float64), exact):
                curves = curves.cast(pa.list_(pa.float32()))
        table = table.set_column(index, "curve", curves)
    with atomic_path(output_dir / PARQUET) as temporary:
        pq.write_table(table, temporary, compression="zstd")
    for shard in shards:
        shard.unlink()
        shard.with_suffix(".f64").unlink(missing_ok=True)
    if (output_dir / SHARDS).is_dir() and not any((output_dir / SHARDS).iterdir()):
        (output_dir / SHARDS).rmdir()
    fsync_folder(output_dir)
    return output_dir / PARQUET
