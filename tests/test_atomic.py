"""filmmine.corpus.atomic: every output is synced, renamed into place, and its directory synced."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from filmmine.corpus import atomic
from filmmine.corpus.atomic import AtomicFile, atomic_open, write_bytes
from filmmine.corpus.shards import StagingWriter
from trainer import atomic as trainer_atomic


def _atomic_file(path: Path) -> None:
    af = AtomicFile(path)
    af.file.write(b"data")
    af.commit()


def _atomic_open(path: Path) -> None:
    with atomic_open(path) as f:
        f.write(b"data")


def _write_bytes(path: Path) -> None:
    assert write_bytes(path, b"data")


def _write_bytes_over_another_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"older")
    assert write_bytes(path, b"data")


def _staging_writer(path: Path) -> None:
    w = StagingWriter(path)
    w.write({"__key__": "k", "json": b"{}"})
    w.close()


@pytest.mark.parametrize("write", [_atomic_file, _atomic_open, _write_bytes,
                                   _write_bytes_over_another_file, _staging_writer])
def test_the_file_is_synced_then_renamed_then_its_directory_synced(tmp_path, events, write):
    """Without the directory's fsync a power loss can undo the rename: the file's bytes are
    on disk, under the temp name or under none."""
    target = Path(os.path.realpath(tmp_path)) / "sub" / "out.bin"
    write(target)
    assert target.is_file()
    assert len(events) == 3, events
    tmp = events[0][1]
    assert events == [("fsync", tmp), ("replace", tmp, str(target)),
                    ("fsync", str(target.parent))]
    assert Path(tmp).parent == target.parent
    assert Path(tmp).name.startswith(atomic.TMP_PREFIX + "out.bin.")


def test_an_unchanged_file_is_neither_written_nor_synced(tmp_path, events):
    target = tmp_path / "same.bin"
    target.write_bytes(b"data")
    assert not write_bytes(target, b"data")
    assert events == []


# the same fallbacks in the trainer's own copy (it imports nothing of filmmine)
BOTH = pytest.mark.parametrize("mod", [atomic, trainer_atomic], ids=["filmmine", "trainer"])


@BOTH
@pytest.mark.parametrize("code", [errno.EACCES, errno.EINVAL])
def test_a_directory_that_cannot_be_synced_is_skipped_quietly(tmp_path, monkeypatch, code, mod):
    """A filesystem that refuses to sync a directory: the rename stands, no error."""
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(code, os.strerror(code))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert mod.write_bytes(tmp_path / "x.bin", b"data") is not False
    assert (tmp_path / "x.bin").read_bytes() == b"data"


@BOTH
def test_a_directory_that_cannot_be_opened_is_skipped_quietly(tmp_path, monkeypatch, mod):
    """A directory without read permission (or Windows, which opens no directory)."""
    real_open = os.open

    def open_(path, flags, *args, **kwargs):
        if os.path.isdir(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    assert mod.write_bytes(tmp_path / "x.bin", b"data") is not False
    assert (tmp_path / "x.bin").read_bytes() == b"data"


@BOTH
def test_a_directory_sync_that_fails_with_an_io_error_is_raised(tmp_path, monkeypatch, mod):
    """EIO: the rename may not be on disk, and the writer must hear of it."""
    def eio(_fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(OSError, match="Input/output error"):
        mod.fsync_dir(tmp_path)
