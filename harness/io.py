"""Crash-safe files: atomic writes, the append-only record store, and the run-folder lock.

- ``atomic_write(path)``: write to a temporary file in the same folder, flush and fsync, then
  ``os.replace`` it over ``path`` and fsync the folder: a reader (or a resumed run) sees the old
  file or the new one, never a torn one.
- ``RecordStore``: JSON lines, appended and fsynced per work unit. Reading never modifies the
  file: a last line without its newline is read if it parses (a complete record whose newline was
  not written) and ignored otherwise; a corrupt line elsewhere is an error naming the file and the
  line. Only the resuming writer repairs (``repair()``), and it says what it did.
- ``RunLock``: an exclusive ``fcntl`` lock on ``<folder>/.lock`` held for a whole run; the file
  names the holder (PID, host, start time), so a second run on the folder is refused with that
  name. The kernel drops the lock when the holder dies, so a killed run leaves no stale lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class RecordsCorrupt(ValueError):
    """A records file holds a line that is not a JSON record."""


class FolderLocked(RuntimeError):
    """Another process holds the run folder's lock."""


def fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path (same folder and suffix as ``path``) to write; on success it
    replaces ``path`` atomically, on error it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                         suffix=f".tmp{path.suffix}")
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from others
        os.replace(temporary, path)
        fsync_folder(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def atomic_save(path: str | os.PathLike, save: Callable[[Path], object]) -> Path:
    """Call ``save(temporary_path)`` (e.g. ``figure.savefig``, ``np.savez``) and move the result
    over ``path`` atomically."""
    with atomic_path(path) as temporary:
        save(temporary)
    return Path(path)


# ----------------------------------------------------------------------------- records


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


# ----------------------------------------------------------------------------- lock


class RunLock:
    """Exclusive lock on a run folder for the life of a run (``with RunLock(folder): ...``)."""

    NAME = ".lock"

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self._handle = None

    def acquire(self) -> RunLock:
        if fcntl is None:  # pragma: no cover - no fcntl: no lock (documented)
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the run
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise FolderLocked(f"output_dir {self.folder} is in use by {holder}; wait for that "
                               "run to end or choose another output_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} on host {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.seek(0)
                self._handle.truncate()
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
