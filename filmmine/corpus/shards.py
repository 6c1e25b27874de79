"""WebDataset shard writing: tar files written atomically, rolled over by count and bytes.

Members per sample: ``KEY.jpg`` (left view), ``KEY.disp.png`` (16-bit disparity) and
``KEY.json``, optionally ``KEY.conf.png`` (8-bit confidence; recipe ``output.confidence``).
Tar headers carry fixed mtime/owner so the same samples give the same bytes.

The tars are written with the standard library's ``tarfile``, member for member as
``webdataset.TarWriter`` writes them (a test compares the bytes), and read back by webdataset:
importing ``webdataset`` imports torch, hundreds of MiB and seconds in every extraction worker
that needs neither.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import AtomicFile

MEMBERS = ("jpg", "disp.png", "json")      # in every sample
OPTIONAL_MEMBERS = ("conf.png",)            # output.confidence = true: in every sample


@dataclass
class ShardInfo:
    name: str
    samples: int
    bytes: int
    sha256: str

    def to_json(self) -> dict:
        return {"name": self.name, "samples": self.samples, "bytes": self.bytes,
                "sha256": self.sha256}


class TarSampleWriter:
    """Samples into a tar stream as ``webdataset.TarWriter(f, user=, group=, mode=,
    encoder=False, mtime=)`` writes them: one member ``KEY.EXT`` per bytes field, fields in
    sorted order (``_``-prefixed ones skipped), the given owner, mode and mtime."""

    def __init__(self, f, user: str = "filmmine", group: str = "filmmine", mode: int = 0o444,
                 mtime: float = 0) -> None:
        self.tarstream = tarfile.open(fileobj=f, mode="w|")  # noqa: SIM115 (closed by owner)
        self.user, self.group, self.mode, self.mtime = user, group, mode, mtime

    def write(self, sample: dict[str, bytes | str]) -> None:
        if "__key__" not in sample:
            raise ValueError("a sample needs a __key__")
        key = sample["__key__"]
        for k in sorted(sample):
            if k.startswith("_"):
                continue
            v = sample[k]
            if not isinstance(v, bytes | bytearray | memoryview):
                raise ValueError(f"sample field {k!r} is {type(v).__name__}, not bytes")
            data = bytes(v)
            ti = tarfile.TarInfo(f"{key}.{k}")
            ti.size, ti.mtime, ti.mode = len(data), self.mtime, self.mode
            ti.uname, ti.gname = self.user, self.group
            self.tarstream.addfile(ti, io.BytesIO(data))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class StagingWriter:
    """One tar of encoded samples for a work unit, renamed into place on close."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = AtomicFile(path)
        self._tw = TarSampleWriter(self._file.file)  # owner filmmine, mode 0444, mtime 0
        self.count = 0

    def write(self, sample: dict[str, bytes | str]) -> None:
        self._tw.write(sample)
        self.count += 1

    def close(self) -> None:
        try:
            self._tw.tarstream.close()  # ends the tar; the file itself stays open for commit
            self._file.commit()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        self._file.abort()
        # mark the tar stream closed too, or its finaliser writes to the closed file
        with contextlib.suppress(OSError, ValueError):
            self._tw.tarstream.close()


# the names a shard's members may have, ``KEY.EXT`` (corpus.reader refuses any other)
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
EXT_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class ShardSink:
    """Writes samples into ``{prefix}-{n:05d}.tar`` shards of at most max_samples / max_bytes."""

    directory: Path
    prefix: str
    max_samples: int
    max_bytes: int
    shards: list[ShardInfo] = field(default_factory=list)
    _writer: StagingWriter | None = None
    _bytes: int = 0

    def write(self, sample: dict[str, bytes | str]) -> str:
        """Write one sample; returns the name of the shard it went into."""
        size = sum(len(v) + 1024 for k, v in sample.items() if k != "__key__")
        if self._writer is not None and (
            self._writer.count >= self.max_samples or self._bytes + size > self.max_bytes
        ):
            self._finish()
        if self._writer is None:
            name = f"{self.prefix}-{len(self.shards):05d}.tar"
            self._writer = StagingWriter(self.directory / name)
            self._bytes = 0
        self._writer.write(sample)
        self._bytes += size
        return self._writer.path.name

    def _finish(self) -> None:
        w = self._writer
        assert w is not None
        w.close()
        self.shards.append(ShardInfo(w.path.name, w.count, w.path.stat().st_size,
                                     sha256_file(w.path)))
        self._writer = None

    def close(self) -> list[ShardInfo]:
        if self._writer is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written (its temp file); finished shards stay."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
