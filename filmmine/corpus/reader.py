"""Reading a corpus back: its manifest, its Parquet tables and the samples of its shards.

The one reader that verify, preview, inspect, the film assembly and the tests use. Corpora
may come from elsewhere, so it trusts no name it reads: a shard a manifest or table names is
opened only under a shard's name (``FILM-NNNNN.tar`` in ``shards/``, :func:`shard_path`), and
a tar member is read only as ``KEY.EXT`` of the format's key pattern, a regular file, never a
path (no ``/``, no ``..``). Shards are read as streams (``r|``): one pass, nothing held but
the sample at hand.

A tar cut short or damaged in a header after its first member ends ``tarfile``'s iteration
silently, as if the archive were complete; this reader reads on to the end-of-archive block
and raises :class:`ShardError` instead, so a truncated shard is reported, never shortened.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import FilmmineError
from .schema import FRAMES_SCHEMA, SAMPLES_SCHEMA, conform
from .shards import EXT_RE, KEY_RE, MEMBERS, OPTIONAL_MEMBERS

KNOWN_MEMBERS = MEMBERS + OPTIONAL_MEMBERS
SHARD_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+-[0-9]{5}\.tar$")
TABLES = {"samples": SAMPLES_SCHEMA, "frames": FRAMES_SCHEMA}
READ_BLOCK = 1 << 20


class ShardError(ValueError):
    """A shard the reader refuses: a member it may not read, or a tar damaged or cut short."""


# ------------------------------------------------------------------------------------------
# Manifest and tables


def read_manifest(corpus: str | Path) -> dict:
    """manifest.json of a corpus; FilmmineError with one line when it is not a corpus."""
    corpus = Path(corpus)
    mf = corpus / "manifest.json"
    if not corpus.is_dir():
        raise FilmmineError(f"no such corpus directory: {corpus}")
    if not mf.is_file():
        raise FilmmineError(f"not a filmmine corpus (no manifest.json): {corpus}; an extract "
                            "writes it last, so rerun an interrupted extract to finish it")
    try:
        man = json.loads(mf.read_text())
    except (OSError, ValueError) as e:
        raise FilmmineError(f"manifest.json unreadable: {e}") from e
    if not isinstance(man, dict):
        raise FilmmineError(f"manifest.json unreadable: a JSON {type(man).__name__}, not an "
                            "object")
    return man


def read_table(corpus: str | Path, name: str) -> pa.Table:
    """``samples`` or ``frames`` (``NAME.parquet``) with its schema's columns (one a corpus of
    an earlier version lacks is null); FilmmineError with one line when it is missing or
    unreadable."""
    schema = TABLES[name]
    path = Path(corpus) / f"{name}.parquet"
    if not path.is_file():
        raise FilmmineError(f"{path.name} missing in {path.parent}")
    try:
        return conform(pq.read_table(path), schema)
    except (OSError, pa.ArrowException, ValueError) as e:
        raise FilmmineError(f"{path.name} unreadable: {str(e).splitlines()[0]}") from e


def is_shard_name(name: object) -> bool:
    """Whether ``name`` (from a manifest or a table) is a shard's file name, not a path."""
    return isinstance(name, str) and SHARD_NAME_RE.match(name) is not None


def shard_path(corpus: str | Path, name: object) -> Path:
    """``corpus/shards/NAME``; ShardError for a name that is no shard name, so a manifest or
    table can never point the reader outside ``shards/`` (``../../x``)."""
    if not is_shard_name(name):
        raise ShardError(f"{name!r} is not a shard name")
    return Path(corpus) / "shards" / str(name)


# ------------------------------------------------------------------------------------------
# Member names


def member_problem(name: str) -> str | None:
    """Why a tar member name is unsafe or malformed (None when it is a sample member ``KEY.EXT``,
    known or not: readers ignore members they do not know, see :func:`is_known_member`)."""
    if name.startswith("/") or "\\" in name:
        return "absolute or Windows path"
    if ".." in name.split("/") or name.startswith(".."):
        return "'..' in path"
    if "/" in name:
        return "member in a subdirectory"
    key, _, ext = name.partition(".")
    if not KEY_RE.match(key):
        return "key is not [A-Za-z0-9_-]+"
    if not ext:
        return "no extension"
    if not EXT_RE.match(ext) or ".." in ext:
        return "extension is not [A-Za-z0-9_.-]+ without '..'"
    return None


def is_known_member(name: str) -> bool:
    """Whether a (safe) member name is one of the format's: ``KEY.jpg``, ``KEY.disp.png``..."""
    return name.partition(".")[2] in KNOWN_MEMBERS


# ------------------------------------------------------------------------------------------
# Shard samples


@dataclass
class ShardSample:
    """One sample of a shard: its members grouped by key, as WebDataset groups them."""

    key: str
    members: dict[str, bytes]                               # extension -> bytes, those read
    unread: list[str] = field(default_factory=list)         # extensions present, not asked for

    def as_dict(self) -> dict[str, bytes | str]:
        """WebDataset's form, ``{"__key__": key, ext: bytes}``, as the shard writer takes it."""
        return {"__key__": self.key, **self.members}


class _Header(tarfile.TarInfo):
    """A tar header that ends the archive only at the end-of-archive (all-zero) block: tarfile
    itself stops without a word at a header that is cut short, empty or damaged."""

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tf)
        except tarfile.EOFHeaderError:
            raise
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError):
            raise tarfile.ReadError(f"truncated: the tar ends at byte {tf.offset} without its "
                                    "end-of-archive block") from None
        except tarfile.HeaderError as e:
            raise tarfile.ReadError(f"damaged tar header at byte {tf.offset}: {e}") from None


def iter_samples(shard: str | Path | BinaryIO, *, members: Collection[str] | None = None,
                 keys: Collection[str] | None = None,
                 on_problem: Callable[[str], None] | None = None) -> Iterator[ShardSample]:
    """The samples of a shard (a path, or a binary file read as a stream), in order.

    ``members``: the extensions to read (None: all); the others are skipped unread and named
    in ``ShardSample.unread``. ``keys``: only these samples (None: all). A member the reader
    may not read (unsafe name, not a regular file), a sample whose members are not contiguous
    or a member twice is a problem: passed to ``on_problem`` (the member skipped, the reading
    goes on), or without it raised as ShardError. A tar that is damaged or cut short raises
    ShardError, naming the last whole sample.
    """
    if isinstance(shard, str | Path):
        path = Path(shard)
        try:
            with path.open("rb") as f:
                yield from iter_samples(f, members=members, keys=keys, on_problem=on_problem)
        except ShardError as e:
            raise ShardError(f"{path.name}: {e}") from e.__cause__
        return

    def problem(message: str) -> None:
        if on_problem is None:
            raise ShardError(message)
        on_problem(message)

    key: str | None = None
    whole: str | None = None                # the last sample read to its end
    current: ShardSample | None = None
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=shard, mode="r|", bufsize=READ_BLOCK, tarinfo=_Header) as tf:
            for m in tf:
                why = member_problem(m.name)
                if why is None and not m.isfile():
                    why = "not a regular file"
                if why is not None:
                    problem(f"member {m.name!r}: {why}")
                    continue
                k, _, ext = m.name.partition(".")
                if k != key:
                    whole = key
                    if current is not None:
                        yield current
                    if k in seen:
                        problem(f"sample {k}: members not contiguous")
                    seen.add(k)
                    key = k
                    current = ShardSample(k, {}) if keys is None or k in keys else None
                if current is None:
                    continue
                if ext in current.members or ext in current.unread:
                    problem(f"sample {k}: duplicate member .{ext}")
                if members is not None and ext not in members:
                    current.unread.append(ext)  # the stream skips it
                    continue
                data = tf.extractfile(m)
                current.members[ext] = data.read() if data is not None else b""
            if current is not None:
                yield current
    except (tarfile.TarError, EOFError) as e:
        after = f" after sample {whole}" if whole is not None else ""
        raise ShardError(f"tar unreadable{after}: {e}") from e
