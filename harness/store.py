"""The record store of a run folder, at any scale and for any number of ranks.

While a run computes, each rank appends to its own write-ahead shard (no two processes ever write
one file): ``records.jsonl`` for a single process, ``shards/rank-<r>.jsonl`` for rank ``r`` of a
distributed run. A record's curve is stored out of line in the shard's binary companion
(``.f64``: float64, little-endian, so nothing is rounded), referenced by ``curve_at: [offset,
length]``; curves are written and fsynced before the line that references them, so a torn binary
tail is never read. The JSON lines follow ``RecordStore``'s rules: appended and fsynced per work
unit; reading never modifies the file (a last line without its newline is read if it parses, and
ignored otherwise; a corrupt line elsewhere is an error naming the file and the line); only the
resuming writer repairs (``RecordStore.repair``), and it says what it did.

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
import time
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harness.errors import RunFolderError
from harness.files import atomic_path, atomic_write, fsync_folder, note_created

PARQUET = "records.parquet"
JSONL = "records.jsonl"  # the write-ahead shard of a single process
SHARDS = "shards"
KEY_COLUMNS = ("method", "metric", "image_id", "measure", "block")  # record_key


class RecordsCorrupt(RunFolderError, ValueError):
    """A records file holds a line that is not a JSON record."""


def record_key(record: dict) -> tuple:
    """Identity of a record: (method, metric, image, measure, block)."""
    return (record["method"], record["metric"], record["image_id"], record.get("measure"),
            record.get("block"))


class RecordStore:
    """Append-only JSON-lines store of records."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _lines(self) -> tuple[list[bytes], bytes]:
        data = self.path.read_bytes() if self.path.exists() else b""
        lines = data.split(b"\n")
        return lines[:-1], lines[-1]

    def load(self) -> list[dict]:
        """Every record, first occurrence of each key; never writes. A corrupt complete line is a
        ``RecordsCorrupt`` naming the file and line; an unterminated last line is read if it is a
        whole record, else ignored with a warning (a killed writer's torn tail)."""
        complete, tail = self._lines()
        records, seen = [], set()
        for number, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            record = self._parse(line, number)
            if record is None:
                raise RecordsCorrupt(
                    f"{self.path} line {number} is not a JSON record ({line[:60]!r}...). "
                    "Rerun with --resume to skip and recompute it (a warning names it), or "
                    "delete the line")
            key = record_key(record)
            if key not in seen:
                seen.add(key)
                records.append(record)
        if tail.strip():
            record = self._parse(tail, len(complete) + 1)
            if record is None:
                warnings.warn(f"{self.path}: ignoring a partly written last line "
                              f"{len(complete) + 1} (a run killed while writing it; --resume "
                              "removes it and recomputes its records)", stacklevel=2)
            elif record_key(record) not in seen:
                records.append(record)
        return records

    @staticmethod
    def _parse(line: bytes, number: int) -> dict | None:
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(record, dict) or not {"method", "metric", "image_id"} <= set(record):
            return None
        return record

    def repair(self) -> list[str]:
        """For the resuming writer: drop corrupt lines and a torn tail, end the file with a
        newline (atomically, the dropped lines saved beside it); returns what was done."""
        if not self.path.exists():
            return []
        complete, tail = self._lines()
        kept, dropped, notes = [], [], []
        for number, line in enumerate(complete + ([tail] if tail else []), start=1):
            if not line.strip():
                continue
            if self._parse(line, number) is None:
                dropped.append(line)
                torn = number == len(complete) + 1
                notes.append(f"{self.path} line {number}: "
                             + ("partly written last line removed" if torn else
                                "corrupt line removed") + "; its records are recomputed")
            else:
                kept.append(line)
        if not dropped and not tail:
            return []
        if not dropped:
            notes.append(f"{self.path}: newline added after the last record")
        if dropped:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            atomic_write(self.path.with_name(f"{self.path.name}.dropped-{stamp}"),
                         b"\n".join(dropped) + b"\n")
        atomic_write(self.path, b"".join(line + b"\n" for line in kept))
        return notes

    def append(self, records: list[dict]) -> None:
        with self.path.open("a") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())



def shard_path(output_dir: str | os.PathLike, rank: int | None) -> Path:
    """The JSON-lines shard a process writes: ``records.jsonl`` (single process, ``rank`` None)
    or ``shards/rank-<rank>.jsonl``."""
    output_dir = Path(output_dir)
    if rank is None:
        return output_dir / JSONL
    return output_dir / SHARDS / f"rank-{rank:03d}.jsonl"


def _curve_bytes(values: np.ndarray, ref: list) -> bytes | None:
    """The stored bytes of the curve ``ref`` = ``[offset, length(, crc32)]`` points to, or None
    where the companion is too short."""
    start, length = int(ref[0]), int(ref[1])
    if start < 0 or length < 0 or start + length > values.size:
        return None
    return values[start:start + length].tobytes()


def curve_problem(values: np.ndarray, ref: list) -> str | None:
    """Why the curve a record references cannot be trusted (None: it can): beyond the end of
    the companion, or bytes whose CRC-32 differs from the one written with the record (a
    companion truncated and appended to again would otherwise hand other records' curves to
    old records)."""
    data = _curve_bytes(values, ref)
    if data is None:
        return "references curve values beyond the end of the companion"
    if len(ref) > 2 and zlib.crc32(data) != int(ref[2]):
        return "references curve values whose checksum differs (the companion was damaged)"
    return None


class ShardWriter:
    """Appends records to one shard: curves to the ``.f64`` companion (fsynced), then the JSON
    lines that reference them with the curve's offset, length and CRC-32 (fsynced): one durable
    step per work unit."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.curves = self.path.with_suffix(".f64")
        note_created(self.path, self.curves)
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
                data = values.tobytes()
                handle.write(data)
                stored = {k: v for k, v in record.items() if k != "curve"}
                stored["curve_at"] = [offset, int(values.size), zlib.crc32(data)]
                offset += values.size
                out.append(stored)
            handle.flush()
            os.fsync(handle.fileno())
        self.lines.append(out)

    def repair(self) -> list[str]:
        """For the resuming writer: repair the JSON lines (``RecordStore.repair``), then drop
        the records whose curve is beyond the companion's end or fails its checksum (saved
        beside the shard; they are recomputed) and cut the companion after the last curve a
        kept record uses. Returns what was done."""
        notes = self.lines.repair()
        if not self.path.exists():
            return notes
        values = (np.fromfile(self.curves, dtype="<f8") if self.curves.exists()
                  else np.empty(0, dtype="<f8"))
        kept, dropped, end = [], [], 0
        for line in self.path.read_bytes().split(b"\n"):
            if not line.strip():
                continue
            record = json.loads(line)
            ref = record.get("curve_at")
            problem = None if ref is None else curve_problem(values, ref)
            if problem is not None:
                dropped.append(line)
                continue
            kept.append(line)
            if ref is not None:
                end = max(end, int(ref[0]) + int(ref[1]))
        if dropped:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            atomic_write(self.path.with_name(f"{self.path.name}.dropped-{stamp}"),
                         b"\n".join(dropped) + b"\n")
            atomic_write(self.path, b"".join(line + b"\n" for line in kept))
            notes.append(f"{self.path}: {len(dropped)} records whose curves in {self.curves.name} "
                         "are missing or damaged were removed; they are recomputed")
        if self.curves.exists() and self.curves.stat().st_size > 8 * end:
            with self.curves.open("r+b") as handle:
                handle.truncate(8 * end)
                os.fsync(handle.fileno())
            if dropped:
                notes.append(f"{self.curves}: cut after the last curve a kept record uses")
        return notes


def _shards(output_dir: Path) -> list[Path]:
    folder = output_dir / SHARDS
    found = sorted(folder.glob("rank-*.jsonl")) if folder.is_dir() else []
    single = output_dir / JSONL
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
        for number, ref in enumerate(refs, start=1):
            problem = None if ref is None else curve_problem(values, ref)
            if problem is not None:
                raise RecordsCorrupt(f"{path}: record {number} {problem} ({companion.name}); the "
                                     "run folder is damaged: --resume removes such records and "
                                     "recomputes them")
        lengths = np.array([0 if ref is None else ref[1] for ref in refs], dtype=np.int64)
        starts = np.array([0 if ref is None else ref[0] for ref in refs], dtype=np.int64)
        index = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths,
                                                                     strict=True)]) \
            if lengths.sum() else np.empty(0, dtype=np.int64)
        if lengths.sum() > np.iinfo(np.int32).max:  # Arrow list offsets are int32
            raise RunFolderError(f"{companion}: {lengths.sum():,} curve values in one shard exceed "
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
    """Each row's record key (``record_key``'s fields, None where a table lacks one)."""
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
    """Every record of the run in ``output_dir`` as a frame, whatever the store: the compacted
    ``records.parquet``, write-ahead shards of any number of ranks, or harness 0.1's
    ``records.jsonl``. Never writes.

    Args:
        output_dir: a run folder.
        curves: read the ``curve`` column too (float32 arrays from a compacted store whose
            curves are exact in float32, else float64; the same values).

    Returns:
        One row per record (first occurrence of each key): ``method``, ``metric``, ``image_id``,
        ``value`` (None where undefined, with a ``status``), ``target``, the metric's fields.

    Raises:
        RunFolderError: the folder does not exist, holds no records or is damaged.
    """
    output_dir = Path(output_dir)
    tables = _tables(output_dir, curves=curves)
    if not tables:
        if not output_dir.is_dir():
            raise RunFolderError(f"{output_dir} does not exist")
        raise RunFolderError(f"{output_dir} holds no records ({PARQUET}, {JSONL} or {SHARDS}/): "
                             "not a harness run folder")
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
    """Every record of the run as dicts.

    Args:
        output_dir: a run folder.
        curves: include each record's ``curve`` (a list of floats).

    Returns:
        The records (``load_frame``'s rows without the fields a record lacks).

    Raises:
        RunFolderError: as ``load_frame``.
    """
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
        raise RunFolderError(f"{output_dir} holds no records to compact")
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
