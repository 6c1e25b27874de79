"""filmmine.corpus.reader: the corpus a real extract wrote reads back whole; shards that are
unsafe, malformed or cut short are refused or reported, never read past or shortened."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from filmmine.corpus.reader import (
    ShardError,
    iter_samples,
    member_problem,
    read_manifest,
    read_table,
    shard_path,
)
from filmmine.corpus.schema import SAMPLES_SCHEMA
from filmmine.corpus.shards import MEMBERS
from filmmine.errors import FilmmineError
from filmmine.tools.verify import verify_corpus

SHARD = "film_tab-00000.tar"


def plain_members(path: Path) -> list[tuple[str, bytes]]:
    """Every member of a tar, read by tarfile itself (the reference to compare with)."""
    with tarfile.open(path) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf]


def test_every_sample_reads_back_with_the_members_the_manifest_promises(corpus):
    man = read_manifest(corpus)
    samples = read_table(corpus, "samples").to_pylist()
    want = set(MEMBERS) | ({"conf.png"} if man["recipe"]["output"]["confidence"] else set())
    assert "conf.png" in want  # the default recipe stores confidence
    total = 0
    for entry in man["shards"]:
        path = shard_path(corpus, entry["name"])
        got = list(iter_samples(path))
        assert len(got) == entry["samples"] > 0
        assert [s.key for s in got] == [r["key"] for r in samples
                                        if r["shard"] == entry["name"]]
        for s in got:
            assert set(s.members) == want and s.unread == []
            assert json.loads(s.members["json"])["key"] == s.key
        # the bytes are the tar's own, member for member, in the shard's order
        assert [(f"{s.key}.{ext}", data) for s in got for ext, data in s.members.items()] == \
            plain_members(path)
        total += len(got)
    assert total == man["totals"]["samples"] == len(samples) == 95
    frames = read_table(corpus, "frames")
    assert frames.filter(frames["accepted"]).num_rows == total


def test_only_the_members_and_samples_asked_for_are_read(corpus):
    path = shard_path(corpus, SHARD)
    keys = [s.key for s in iter_samples(path, members=())]
    picked = {keys[1], keys[-1]}
    got = list(iter_samples(path, members=("json",), keys=picked))
    assert [s.key for s in got] == [keys[1], keys[-1]]
    for s in got:
        assert list(s.members) == ["json"] and sorted(s.unread) == ["conf.png", "disp.png", "jpg"]
        assert s.as_dict() == {"__key__": s.key, "json": s.members["json"]}


def test_tables_and_manifest_of_what_is_not_a_corpus(corpus, tmp_path):
    with pytest.raises(FilmmineError, match="no such corpus directory"):
        read_manifest(tmp_path / "nothing")
    with pytest.raises(FilmmineError, match=r"no manifest\.json"):
        read_manifest(tmp_path)
    with pytest.raises(FilmmineError, match=r"samples\.parquet missing"):
        read_table(tmp_path, "samples")
    (tmp_path / "frames.parquet").write_bytes(b"PAR1 not a table")
    with pytest.raises(FilmmineError, match=r"frames\.parquet unreadable"):
        read_table(tmp_path, "frames")
    # a table written with narrower types comes back in the corpus schema
    written = pq.read_table(corpus / "samples.parquet")
    narrow = pa.schema([f.with_type(pa.int32()) if f.name == "frame_index" else f
                        for f in written.schema])
    pq.write_table(written.cast(narrow), tmp_path / "samples.parquet")
    assert read_table(tmp_path, "samples").schema == SAMPLES_SCHEMA
    # a manifest or table cannot point the reader outside shards/
    for name in ("../../manifest.json", "/etc/passwd", "film_tab-00000.tar/..", "x.tar"):
        with pytest.raises(ShardError, match="is not a shard name"):
            shard_path(corpus, name)
    assert shard_path(corpus, SHARD) == corpus / "shards" / SHARD


# ---------------------------------------------------------------------------- unsafe tars


def write_tar(path: Path, members: list[tuple[str, bytes | str]]) -> Path:
    """A tar of regular members ``(name, bytes)``, or symlinks ``(name, "->target")``."""
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data.removeprefix("->")
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


GOOD = [("f_00000001.jpg", b"j"), ("f_00000001.json", b"{}")]


@pytest.mark.parametrize(("bad", "why"), [
    (("../f_00000002.json", b"{}"), "'..' in path"),
    (("../../etc/f_00000002.json", b"{}"), "'..' in path"),
    (("/abs/f_00000002.json", b"{}"), "absolute"),
    (("sub/f_00000002.json", b"{}"), "subdirectory"),
    (("f_00000002.jpg", "->/etc/passwd"), "not a regular file"),
    (("f m_00000002.jpg", b"x"), "key is not"),
    ((".hidden.json", b"{}"), "key is not"),
    (("f_00000002", b"x"), "no extension"),
    (("f_00000002...json", b"{}"), "extension"),
    (("f_00000002.j s", b"{}"), "extension"),
])
def test_an_unsafe_member_is_refused_or_skipped_and_reported(tmp_path, bad, why):
    path = write_tar(tmp_path / "evil-00000.tar", [*GOOD, bad, ("f_00000003.json", b"{}")])
    with pytest.raises(ShardError) as refused:
        list(iter_samples(path))
    assert str(refused.value).startswith(f"evil-00000.tar: member {bad[0]!r}: ")
    assert why in str(refused.value)
    problems: list[str] = []
    got = list(iter_samples(path, on_problem=problems.append))
    assert problems == [f"member {bad[0]!r}: {member_problem(bad[0]) or 'not a regular file'}"]
    # the member is skipped, never read; the samples around it are whole
    assert [(s.key, s.members) for s in got] == [
        ("f_00000001", {"jpg": b"j", "json": b"{}"}), ("f_00000003", {"json": b"{}"})]


def test_a_sample_split_or_doubled_is_a_problem(tmp_path):
    split = write_tar(tmp_path / "split-00000.tar", [
        *GOOD, ("f_00000002.json", b"{}"), ("f_00000001.disp.png", b"d")])
    with pytest.raises(ShardError, match="sample f_00000001: members not contiguous"):
        list(iter_samples(split))
    problems: list[str] = []
    assert [s.key for s in iter_samples(split, on_problem=problems.append)] == [
        "f_00000001", "f_00000002", "f_00000001"]
    assert problems == ["sample f_00000001: members not contiguous"]
    twice = write_tar(tmp_path / "twice-00000.tar", [*GOOD, ("f_00000001.json", b"[]")])
    with pytest.raises(ShardError, match=r"sample f_00000001: duplicate member \.json"):
        list(iter_samples(twice))


# ---------------------------------------------------------------------------- damaged tars


def member_offsets(path: Path) -> list[int]:
    """Where each member's header starts."""
    with tarfile.open(path) as tf:
        return [m.offset for m in tf]


def read_all(path: Path) -> tuple[list[str], ShardError | None]:
    """The keys read before the reader stopped, and the error it stopped with."""
    keys: list[str] = []
    try:
        for s in iter_samples(path):
            keys.append(s.key)
    except ShardError as e:
        return keys, e
    return keys, None


def test_a_shard_cut_at_a_member_boundary_is_reported_not_shortened(corpus, tmp_path):
    src = shard_path(corpus, SHARD)
    n_members = len(MEMBERS) + 1
    cut = member_offsets(src)[3 * n_members]   # the first header of the 4th sample
    short = tmp_path / SHARD
    short.write_bytes(src.read_bytes()[:cut])
    with tarfile.open(short) as tf:   # tarfile alone sees a whole archive of 3 samples
        assert len(tf.getmembers()) == 3 * n_members
    keys, err = read_all(short)
    assert err is not None and "truncated" in str(err) and f"at byte {cut}" in str(err)
    assert SHARD in str(err)
    whole = [s.key for s in iter_samples(src)]
    # the samples before the cut are read (the last of them still unfinished for the reader)
    assert keys == whole[:2] and f"after sample {whole[1]}" in str(err)


def test_a_shard_cut_inside_a_member_or_header_is_reported(corpus, tmp_path):
    src = shard_path(corpus, SHARD)
    data = src.read_bytes()
    offsets = member_offsets(src)
    for cut in (offsets[5] + 100, offsets[5] + 700, len(data) * 2 // 5, 0):
        short = tmp_path / SHARD
        short.write_bytes(data[:cut])
        _, err = read_all(short)
        assert err is not None, cut
        assert "tar unreadable" in str(err), (cut, err)


def test_a_damaged_header_is_reported_not_the_end_of_the_shard(corpus, tmp_path):
    src = shard_path(corpus, SHARD)
    data = bytearray(src.read_bytes())
    at = member_offsets(src)[9]
    data[at + 3] ^= 0x20   # a bit of the member's name: its header checksum no longer holds
    bad = tmp_path / SHARD
    bad.write_bytes(bytes(data))
    keys, err = read_all(bad)
    assert err is not None and f"damaged tar header at byte {at}" in str(err)
    assert 0 < len(keys) < len(list(iter_samples(src)))


def test_verify_names_a_shard_cut_at_a_boundary_even_when_re_signed(corpus, tmp_path):
    """The manifest's size and hash made to match the cut shard: the reader's error still
    names what is wrong with it."""
    import hashlib

    c = tmp_path / "c"
    shutil.copytree(corpus, c)
    path = c / "shards" / SHARD
    cut = member_offsets(path)[3 * (len(MEMBERS) + 1)]
    data = path.read_bytes()[:cut]
    path.write_bytes(data)
    man = json.loads((c / "manifest.json").read_text())
    entry = next(s for s in man["shards"] if s["name"] == SHARD)
    entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (c / "manifest.json").write_text(json.dumps(man))
    report = verify_corpus(c, workers=1)
    assert report.bad_shards == [SHARD]
    assert any(p.kind == "corrupt" and "truncated: the tar ends at byte" in p.message
               for p in report.problems), [p.line() for p in report.problems]
