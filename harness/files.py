"""Crash-safe files: atomic writes, the run-folder lock, and the manifest of a run's own files.

- ``atomic_write(path)``: write to a temporary file in the same folder, flush and fsync, then
  ``os.replace`` it over ``path`` and fsync the folder: a reader (or a resumed run) sees the old
  file or the new one, never a torn one. Written files get the permissions the process's umask
  allows (read once, without changing it: other threads may be creating files).
- ``owned_by(folder)``: while a run holds its folder, every file it creates there (atomic writes,
  their temporary files, record shards) is listed in ``<folder>/.harness-files`` before it is
  created. The harness deletes only files listed there (orphaned temporary files on resume, the
  earlier run's files on ``--overwrite``), never by a name pattern and never outside the folder.
- ``RunLock``: an exclusive ``fcntl`` lock on ``<folder>/.lock`` held for a whole run; the file
  names the holder (PID, host, start time), so a second run on the folder is refused with that
  name. The kernel drops the lock when the holder dies, so a killed run leaves no stale lock.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from harness.errors import ConfigError, RunFolderError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

TEMP_PREFIX = "."  # temporary files are ".<name>.<random>.tmp<suffix>" beside their target
TEMP_MARK = ".tmp"


class FolderLocked(RunFolderError):
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
    replaces ``path`` atomically, on error it is removed and ``path`` is untouched. Inside a
    run's folder both are listed in its manifest first (``owned_by``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}{TEMP_MARK}{path.suffix}"
    note_created(path, temporary)
    os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
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



def _read_umask() -> int:
    """The process's umask, read from ``/proc/self/status`` where it exists (no change of the
    process state); elsewhere by setting and restoring it, once."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK


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
        try:
            handle = open(self.path, "a+")  # noqa: SIM115 - held open for the run
        except OSError as error:
            raise RunFolderError(f"cannot open the lock file {self.path}: {error.strerror}; it "
                                 "must be a writable file (remove whatever is at that path if "
                                 "no run uses the folder)") from None
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



# ----------------------------------------------------------------------------- ownership

MANIFEST = ".harness-files"
_owners: list[Path] = []  # the run folders this process holds (normally one)
_owners_lock = threading.Lock()


@contextlib.contextmanager
def owned_by(folder: str | os.PathLike) -> Iterator[Path]:
    """While inside, list every file this process creates under ``folder`` in its manifest."""
    folder = Path(folder).resolve()
    with _owners_lock:
        _owners.append(folder)
    try:
        yield folder
    finally:
        with _owners_lock:
            _owners.remove(folder)


def note_created(*paths: str | os.PathLike) -> None:
    """Add ``paths`` to the manifest of the run folder that holds them (if this process holds
    one): written before the files are created, so that a kill never leaves a file of ours that
    the manifest does not name."""
    with _owners_lock:
        owners = list(_owners)
    for owner in owners:
        relative = []
        for path in paths:
            resolved = Path(path).resolve()
            if resolved != owner and owner in resolved.parents:
                relative.append(str(resolved.relative_to(owner)))
        if relative:
            with open(owner / MANIFEST, "a") as handle:
                handle.write("".join(f"{name}\n" for name in relative))


def created_files(folder: str | os.PathLike) -> list[Path]:
    """The files the manifest of ``folder`` names that still exist inside it (each once)."""
    folder = Path(folder).resolve()
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return []
    found = []
    for line in dict.fromkeys(manifest.read_text().splitlines()):
        if not line or os.path.isabs(line):
            continue
        path = (folder / line).resolve()
        if folder in path.parents and (path.is_file() or path.is_symlink()):
            found.append(folder / line)
    return found


def remove_created(folder: str | os.PathLike, *, temporary_only: bool) -> list[Path]:
    """Delete the files of ``folder``'s manifest that still exist: the temporary files only
    (what a killed write left; on resume), or every file the runs created (``--overwrite``);
    then prune the manifest to what remains. Empty folders the runs made are removed too.
    Returns the paths deleted."""
    folder = Path(folder).resolve()
    removed = []
    for path in created_files(folder):
        if temporary_only and not (path.name.startswith(TEMP_PREFIX) and TEMP_MARK in path.name):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
        parent = path.parent
        while parent != folder and folder in parent.parents:
            try:
                parent.rmdir()  # only when empty
            except OSError:
                break
            parent = parent.parent
    kept = [str(path.relative_to(folder)) for path in created_files(folder)]
    manifest = folder / MANIFEST
    if manifest.exists():
        atomic_write(manifest, "".join(f"{name}\n" for name in kept))
    return removed


# ----------------------------------------------------------------------------- names


NAME_LIMIT = 100  # characters of a name used as a file or folder name (ext4 allows 255 bytes)
RESERVED_NAMES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                  *(f"lpt{i}" for i in range(1, 10))}  # reserved on Windows (shared folders)


def check_file_name(name: str, key: str) -> str:
    """``name`` as the harness uses it for a file or folder (a method's display name): refuse
    path separators, ``..``, absolute paths, control characters, names the run's own temporary
    files or hidden files would take, reserved device names and names over ``NAME_LIMIT``
    characters, with a ``ConfigError`` naming ``key``. Returns ``name``."""
    problem = None
    if not isinstance(name, str) or not name.strip():
        problem = "is empty"
    elif "/" in name or "\\" in name or os.sep in name:
        problem = "holds a path separator"
    elif name in (".", "..") or name.startswith("."):
        problem = "starts with '.' (hidden and temporary files do)"
    elif any(ord(char) < 32 or ord(char) == 127 for char in name):
        problem = "holds a control character"
    elif name.split(".")[0].casefold() in RESERVED_NAMES:
        problem = "is a reserved device name on Windows"
    elif len(name) > NAME_LIMIT:
        problem = f"is {len(name)} characters long (at most {NAME_LIMIT})"
    elif name != name.strip():
        problem = "starts or ends with a space"
    if problem is not None:
        raise ConfigError(f"{key}: the name {name!r} {problem}; it names the method's files and "
                          "folders, so choose a plain name (letters, digits, '-', '_', '.') and "
                          "give the registry name under 'method'")
    return name


def file_name(name: str) -> str:
    """The file or folder name of a checked name (``check_file_name``): ``:`` (adapters and
    plug-ins, ``captum:Saliency``), which Windows and some tools refuse, becomes ``_``."""
    return name.replace(":", "_")
