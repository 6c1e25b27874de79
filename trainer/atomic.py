"""Durable whole-file output: a temp file beside the target, flushed and fsynced, renamed over
the target, then the directory fsynced.

A run killed mid-write (or Ctrl-C, or a full disk) leaves the previous file under its name and
no temp file; a power loss after a write returned loses neither the bytes nor the rename. The
trainer imports nothing of filmmine: ``filmmine/atomic.py`` does the same for the miner.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TMP_PREFIX = ".tmp-"
# a directory that cannot be opened for reading (Windows, no read permission), or a filesystem
# that does not sync directories: the rename is as durable as it gets there
_NO_DIR_SYNC = {errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP,
                errno.EISDIR, errno.EBADF}


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so that a rename into it (or a file created in it) survives a power
    loss. Quietly nothing where the platform cannot; any other error (EIO) is raised."""
    if os.name == "nt":
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as e:
        if e.errno in _NO_DIR_SYNC:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _NO_DIR_SYNC:
            raise
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """A temp file beside ``path`` open for writing (``"wb"`` or ``"w"``); when the block ends
    without an error it replaces ``path`` durably, else it is removed."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode 'wb' or 'w', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        f = os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    try:
        with f:
            yield f
            f.flush()  # a full disk may only show here, or at the fsync
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def append_line(path: str | Path, line: str) -> None:
    """Append one line and fsync it, so that a line logged before a power loss is kept; the
    directory too when the append created the file. Appends are not renames: a power loss
    during one can leave a torn last line, which readers of such a log skip."""
    path = Path(path)
    new = not path.exists()
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    if new:
        fsync_dir(path.parent)


def remove_stale_temps(directory: str | Path, names: tuple[str, ...] | None = None) -> int:
    """Delete temp files a killed writer left in ``directory`` (not below it): every one, or
    those of the targets ``names``. Returns how many."""
    n = 0
    d = Path(directory)
    if not d.is_dir():
        return 0
    for p in d.glob(TMP_PREFIX + "*"):
        rest = p.name[len(TMP_PREFIX):]
        if names is not None and not any(rest == t or rest.startswith(t + ".") for t in names):
            continue
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            p.unlink()
            n += 1
    return n
