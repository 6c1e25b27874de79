"""The output lock: one extract run writes a corpus at a time."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from pathlib import Path

from ..errors import (
    CorpusBusy,
)

log = logging.getLogger(__name__)


class CorpusLock:
    """One ``extract`` at a time per corpus: an exclusive ``flock`` on ``out/.extract.lock``.

    Two runs on one corpus (a job submitted twice) would delete each other's temp files and
    staging, and the run that ended last would write the manifest: the second run stops at
    once with a one-line reason. The kernel drops the lock with its process, so after
    ``kill -9`` the next run takes it (the file stays until a run ends). A file system
    without ``flock`` (some network mounts) raises ENOLCK/EOPNOTSUPP: the run goes on
    unlocked."""

    NAME = ".extract.lock"

    def __init__(self, out: Path) -> None:
        import fcntl

        self.path = out / self.NAME
        self.fd: int | None = None
        while self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise CorpusBusy(f"{out} is being written by another filmmine extract "
                                 f"({holder}); wait for it to end, or use another --out") from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                log.warning("%s: no file locking here (%s); not guarded against a second run",
                            out, e.strerror)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
            else:  # locked a file the run before removed as it ended: lock the new one
                os.close(fd)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())

    def release(self) -> None:
        """Remove the lock file, then drop the lock (a run that opens the file before the
        removal finds it locked; one after it makes a new one)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None
