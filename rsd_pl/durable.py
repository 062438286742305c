"""Files that survive a kill at any moment: append-only JSON-line logs, whole-file atomic writes and a
per-folder writer lock.

- `append_jsonl` appends one record, flushed and fsynced; `repair_torn_tail` (called by every log writer
  before its first append) cuts the fragment a killed writer left after the last newline, and says so.
- `atomic_write` writes a file under a temporary name in the same folder, fsyncs and renames it over the
  target: a reader sees the old content or the new one, never a mix. A full disk (ENOSPC) leaves the
  old file as it was and raises `RsdError` saying so.
- `FolderLock` refuses a second process writing the same output folder (eval, sweep, collect), naming
  the folder and the process that holds it. It is an advisory `flock`, released by the kernel when the
  holder dies, so a killed run never leaves a stale lock behind.
- `StopOnSigterm` turns SIGTERM (`kill <pid>`, a scheduler's preemption) into a stop between two units of work,
  with a message saying where the finished ones are, instead of a silent death in the middle of one.

Standard-library only, no rsd_pl imports beyond errors: anything may use it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from rsd_pl.errors import RsdError

LOCK_FILE = ".rsd_pl.lock"


def disk_full_error(path: Path, kept: str, error: BaseException) -> RsdError:
    """The message of a write that failed for lack of space: what is kept, and where."""
    reason = getattr(error, "strerror", None) or str(error)
    return RsdError(f"{path}: disk full ({reason}): nothing of this write was kept; {kept}. "
                    "Free some space and rerun: it resumes from there")


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC from Python's own writes, or from h5py / safetensors (which report it in their messages)."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(error)


def repair_torn_tail(path: Path) -> bool:
    """Cut a JSON-line file back to its last newline (what a writer killed mid-line leaves after it).

    Returns whether anything was cut; prints one line naming the file and the bytes dropped.
    """
    if not path.is_file():
        return False
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return False
        keep = _last_newline_end(f, size)
        if keep == size:
            return False
        f.seek(keep)
        fragment = f.read(200)
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    print(f"{path}: dropped a torn last line ({size - keep} bytes, a writer was killed mid-line: "
          f"{fragment[:60]!r}...); that record is redone", file=sys.stderr)
    return True


def _last_newline_end(f: Any, size: int, block: int = 1 << 16) -> int:
    """Offset just past the file's last b'\\n' (0 when there is none), reading backwards."""
    end = size
    while end > 0:
        start = max(0, end - block)
        f.seek(start)
        chunk = f.read(end - start)
        index = chunk.rfind(b"\n")
        if index >= 0:
            return start + index + 1
        end = start
    return 0


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line, flushed to disk. A failed write (e.g. ENOSPC) is cut back off the file, so
    the log keeps exactly its earlier records, and raises RsdError."""
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # unbuffered: a failure is this call's
    try:
        before = os.lseek(fd, 0, os.SEEK_END)
        try:
            written = 0
            while written < len(line):
                written += os.write(fd, line[written:])
            os.fsync(fd)
        except OSError as error:
            os.ftruncate(fd, before)
            if is_disk_full(error):
                raise disk_full_error(path, f"the file keeps its first {before} bytes", error) from error
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """`with atomic_file(path) as f: f.write(...)` replaces `path` all at once when the block ends (a temporary
    `.<name>.*.partial` in the same folder, fsync, rename); an exception leaves the old file as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide reports and registries from other users
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(error):
            kept = "the previous version is intact" if path.exists() else "the file was not created"
            raise disk_full_error(path, kept, error) from error
        raise
    fsync_path(path.parent)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Replace `path` with `data` all at once (`atomic_file`)."""
    with atomic_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (a rename or a new file in it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FolderLock:
    """`with FolderLock(out, "eval"):` - only one rsd_pl process writes `out` at a time.

    The lock file `<out>/.rsd_pl.lock` holds the holder's pid, host, command and start time, so the
    refusal can name it. A lock held by a dead process is free (flock dies with its holder). Re-entrant
    within a process (eval takes it before loading models, and again around its episode loop).
    """

    _held: dict[Path, int] = {}  # folder -> nesting depth in this process

    def __init__(self, folder: str | Path, command: str) -> None:
        self.folder = Path(folder)
        self.command = command
        self._handle: Any = None
        self._key: Path | None = None

    def __enter__(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        key = self._key = self.folder.resolve()
        if key in FolderLock._held:
            FolderLock._held[key] += 1
            return self
        handle = open(self.folder / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RsdError(f"{self.folder}: another rsd_pl process is writing this folder ({holder}); wait "
                           f"for it to end, or use another output folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{self.command}, pid {os.getpid()} on {socket.gethostname()}, "
                     f"since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._handle = handle
        FolderLock._held[key] = 1
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        key = self._key
        FolderLock._held[key] -= 1
        if FolderLock._held[key]:
            return
        del FolderLock._held[key]
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


class StopOnSigterm:
    """`with StopOnSigterm(where) as stop: ... stop.check()` between units of work: after a SIGTERM, `check` raises
    `RsdError` naming `where` (what is kept there) and how to resume. The previous handler is restored on exit. In
    the main thread only (Python delivers signals there); elsewhere it does nothing and SIGTERM keeps its default."""

    def __init__(self, where: str | Path) -> None:
        self.where, self.received, self._previous = str(where), False, None

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True

    def __enter__(self) -> StopOnSigterm:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def check(self) -> None:
        if self.received:
            raise stopped_on_sigterm(self.where)


def stopped_on_sigterm(where: str | Path) -> RsdError:
    """The error of a command stopped between two episodes by SIGTERM (eval's and replay's)."""
    return RsdError(f"stopped on SIGTERM; every finished episode is in {where}: rerun the same command to resume")
