"""Atomic file output: write a temp file beside the target, fsync it, rename, fsync the directory.

A reader (or a resumed run) never sees a half-written file under its final name, and a power
loss after a write returned loses neither the file's bytes nor the rename that named it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TMP_PREFIX = ".tmp-"
# a directory that cannot be opened for reading (Windows, a directory without read permission),
# or a filesystem that does not sync directories: the rename is as durable as it gets there
_NO_DIR_SYNC = {errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP,
                errno.EISDIR, errno.EBADF}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so that a rename into it survives a power loss (POSIX).

    Quietly nothing where the platform cannot: Windows opens no directory, some filesystems
    refuse to sync one. Any other error (EIO) is raised: the rename may not be on disk.
    """
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


def replace_durably(src: str | Path, dst: str | Path) -> None:
    """``os.replace(src, dst)``, then fsync of ``dst``'s directory (``src`` already synced)."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


class AtomicFile:
    """A temp file that becomes ``path`` on :meth:`commit` and vanishes on :meth:`abort`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=TMP_PREFIX + self.path.name + ".",
                                        dir=self.path.parent)
        os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are shared data
        self.file: BinaryIO = os.fdopen(fd, "wb")

    def commit(self) -> None:
        try:
            self.file.flush()  # a full disk may only show here, or at the fsync
            os.fsync(self.file.fileno())
            self.file.close()
            replace_durably(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        with contextlib.suppress(OSError):  # closing flushes: it may fail on a full disk
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """Open a temp file for binary writing; on success it replaces ``path`` atomically."""
    af = AtomicFile(path)
    try:
        yield af.file
    except BaseException:
        af.abort()
        raise
    af.commit()


def write_bytes(path: str | Path, data: bytes, *, keep_if_same: bool = True) -> bool:
    """Write ``data`` atomically; leave an identical existing file untouched. True if written."""
    path = Path(path)
    if (keep_if_same and path.is_file() and path.stat().st_size == len(data)
            and path.read_bytes() == data):
        return False
    with atomic_open(path) as f:
        f.write(data)
    return True


def remove_stale_temps(root: str | Path) -> int:
    """Delete temp files a killed run left behind. Returns how many."""
    n = 0
    for p in Path(root).rglob(TMP_PREFIX + "*"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n
