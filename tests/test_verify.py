"""filmmine verify: a sound corpus passes; each kind of damage is found and named."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import tarfile
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from filmmine import cli
from filmmine.corpus.reader import member_problem
from filmmine.tools.verify import format_report, verify_corpus
from filmmine.tools.verify_shard import check_shard

DAMAGED = "film_tab-00000.tar"


def copy_corpus(corpus: Path, dest: Path) -> Path:
    shutil.copytree(corpus, dest)
    return dest


def test_sound_corpus_passes_and_counts_match_the_tables(corpus, capsys):
    man = json.loads((corpus / "manifest.json").read_text())
    samples = pq.read_table(corpus / "samples.parquet")
    frames = pq.read_table(corpus / "frames.parquet").to_pylist()
    report = verify_corpus(corpus, workers=1)
    assert report.ok, [p.line() for p in report.problems]
    assert report.shards == len(man["shards"]) == 5
    assert report.samples == samples.num_rows == sum(r["accepted"] for r in frames) == 95
    assert report.bytes == sum(s["bytes"] for s in man["shards"])
    assert cli.main(["verify", str(corpus), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["samples"] == 95 and data["problems"] == []
    assert cli.main(["verify", str(corpus)]) == 0
    assert capsys.readouterr().out.startswith("verify OK: 5 shard(s), 95 samples")


def _flip(path: Path) -> None:
    b = bytearray(path.read_bytes())
    b[len(b) // 2] ^= 0x40
    path.write_bytes(bytes(b))


def _truncate(path: Path) -> None:
    b = path.read_bytes()
    path.write_bytes(b[: len(b) * 2 // 5])


@pytest.mark.parametrize(("damage", "kind", "words", "workers"), [
    (_flip, "CORRUPT", "sha256", 2),          # also runs the process pool
    (_truncate, "CORRUPT", "truncated", 1),
    (Path.unlink, "MISSING", "shard file not found", 1),
])
def test_damaged_shard_is_named(corpus, tmp_path, capsys, damage, kind, words, workers):
    c = copy_corpus(corpus, tmp_path / "c")
    damage(c / "shards" / DAMAGED)
    code = cli.main(["verify", str(c), "--workers", str(workers)])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    problems, summary = out[:-1], out[-1]
    assert problems and all(DAMAGED in line for line in problems), out
    assert any(line.startswith(kind) and words in line for line in problems), out
    assert summary.startswith("verify FAILED") and summary.count(".tar") == 1
    assert f"1 bad shard(s): {DAMAGED}" in summary
    report = verify_corpus(c, workers=1)
    assert report.bad_shards == [DAMAGED]
    if damage is _truncate:  # the samples that are still whole are read, the rest counted lost
        assert 0 < report.samples < 95
        assert any("holds" in p.message and p.kind == "mismatch" for p in report.problems)


def rewrite_shard(c: Path, name: str, edit) -> None:
    """Rewrite a shard's members through ``edit(name, bytes) -> [(name, bytes)...]`` (none drops
    the member, more add some) and re-sign it in the manifest, so only the content checks (not
    the hash) can find what changed."""
    src = c / "shards" / name
    buf = io.BytesIO()
    with tarfile.open(src) as tin, tarfile.open(fileobj=buf, mode="w") as tout:
        for m in tin:
            for new_name, data in edit(m.name, tin.extractfile(m).read()):
                info = tarfile.TarInfo(new_name)
                info.size = len(data)
                tout.addfile(info, io.BytesIO(data))
    src.write_bytes(buf.getvalue())
    man = json.loads((c / "manifest.json").read_text())
    for s in man["shards"]:
        if s["name"] == name:
            s["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
            s["bytes"] = len(buf.getvalue())
    (c / "manifest.json").write_text(json.dumps(man))


def test_content_checks_find_what_a_rehashed_shard_hides(corpus, tmp_path):
    c = copy_corpus(corpus, tmp_path / "c")
    samples = pq.read_table(c / "samples.parquet").to_pylist()
    keys = [r["key"] for r in samples if r["shard"] == DAMAGED]
    bad_key, cut_key = keys[2], keys[5]

    def edit(name: str, data: bytes):
        if name == f"{bad_key}.json":
            meta = json.loads(data)
            meta["valid_fraction"] = round(meta["valid_fraction"] - 0.05, 6)
            data = json.dumps(meta).encode()
        if name == f"{cut_key}.jpg":
            data = data[: len(data) // 3]  # a JPEG cut short
        return [(name, data)]

    rewrite_shard(c, DAMAGED, edit)
    report = verify_corpus(c, workers=1)
    msgs = [p.message for p in report.problems]
    assert {p.where for p in report.problems} == {DAMAGED}, msgs
    assert any(bad_key in m and "valid fraction" in m for m in msgs), msgs
    assert any(cut_key in m and "JPEG" in m for m in msgs), msgs
    assert not any("sha256" in m for m in msgs)
    # --quick reads and parses but decodes no image: the same shard passes
    assert verify_corpus(c, workers=1, decode=False).ok


def test_unsafe_member_names(tmp_path):
    assert member_problem("film_00000001.jpg") is None
    assert member_problem("film_00000001.disp.png") is None
    assert "absolute" in member_problem("/etc/passwd.jpg")
    assert "'..'" in member_problem("../film_00000001.jpg")
    assert "subdirectory" in member_problem("a/film_00000001.jpg")
    assert "key" in member_problem("f m_00000001.jpg")
    assert "no extension" in member_problem("film_00000001")
    # names of members verify does not know are sound names (CORPUS.md: readers ignore them)
    assert member_problem("film_00000001.exe") is None
    assert member_problem("film.v2_00000001.jpg") is None  # key "film", member .v2_00000001.jpg
    assert "'..'" in member_problem("../film_00000001.extra.bin")
    shard = tmp_path / "x-00000.tar"
    with tarfile.open(shard, "w") as tf:
        for name in ("../evil.json", "/abs.jpg"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tf.addfile(info, io.BytesIO(b"{}"))
    check = check_shard(str(shard), None, None, "x")
    assert len(check.problems) == 2 and check.keys == []
    assert all("member" in p for p in check.problems)


def test_missing_tables_and_unlisted_shards(corpus, tmp_path):
    c = copy_corpus(corpus, tmp_path / "c")
    (c / "frames.parquet").unlink()
    shutil.copy(c / "shards" / DAMAGED, c / "shards" / "stray-00000.tar")
    report = verify_corpus(c, workers=1)
    where = {(p.where, p.kind) for p in report.problems}
    assert where == {("frames.parquet", "table"), ("stray-00000.tar", "unlisted")}
    assert report.exit_code == 1


def test_a_manifest_cannot_point_outside_the_shards(corpus, tmp_path):
    c = copy_corpus(corpus, tmp_path / "c")
    man = json.loads((c / "manifest.json").read_text())
    real = man["shards"][0]["name"]
    man["shards"][0]["name"] = "../../manifest.json"
    (c / "manifest.json").write_text(json.dumps(man))
    report = verify_corpus(c, workers=1)
    lines = [p.line() for p in report.problems]
    assert "MISMATCH manifest.json: shard entry '../../manifest.json' is not a shard name" in lines
    assert f"UNLISTED {real}: shard file not in the manifest" in lines
    assert report.shards == 4


def _huge_png(data: bytes) -> bytes:
    """The PNG with its IHDR (CRC fixed) claiming 200000 x 200000 px: OpenCV raises."""
    b = bytearray(data)
    b[16:24] = struct.pack(">II", 200000, 200000)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    return bytes(b)


@pytest.mark.parametrize(("ext", "damage"), [
    ("jpg", lambda d: b""), ("disp.png", lambda d: b""), ("conf.png", lambda d: b""),
    ("disp.png", _huge_png),
])
def test_an_image_opencv_refuses_is_reported_not_a_crash(corpus, tmp_path, ext, damage):
    c = copy_corpus(corpus, tmp_path / "c")
    row = pq.read_table(c / "samples.parquet").to_pylist()[-1]
    key, shard = row["key"], row["shard"]
    rewrite_shard(c, shard, lambda name, data: [(name, damage(data) if name == f"{key}.{ext}"
                                                 else data)])
    report = verify_corpus(c, workers=1)
    assert [(p.where, p.kind) for p in report.problems] == [(shard, "corrupt")]
    assert key in report.problems[0].message and "does not decode" in report.problems[0].message


@pytest.mark.parametrize("text", ["[]", "null", '"filmmine-corpus/1"'])
@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_a_manifest_that_is_not_an_object_is_a_one_line_error(tmp_path, capsys, text, command):
    c = tmp_path / "c"
    c.mkdir()
    (c / "manifest.json").write_text(text)
    assert cli.main([command, str(c)]) == 2
    err = capsys.readouterr().err
    assert "manifest.json" in err and err.count("\n") == 1, err


def _set_shard(field, value):
    def edit(man):
        man["shards"][0][field] = value
    return edit


@pytest.mark.parametrize(("edit", "words"), [
    (_set_shard("samples", None), "samples is None"),
    (_set_shard("samples", "19"), "samples is '19'"),
    (_set_shard("bytes", "1e6"), "bytes is '1e6'"),
    (_set_shard("sha256", 5), "sha256 is 5"),
    # a shard the manifest gives no hash for was hashed against nothing, and passed
    (lambda man: man["shards"][0].pop("sha256"), "sha256 is missing"),
    (lambda man: man.update(totals=None), "totals is None"),
    (lambda man: man["films"].update(film_tab=None), "films.film_tab is None"),
])
def test_malformed_manifest_fields_are_reported_not_a_crash(corpus, tmp_path, edit, words):
    c = copy_corpus(corpus, tmp_path / "c")
    man = json.loads((c / "manifest.json").read_text())
    edit(man)
    (c / "manifest.json").write_text(json.dumps(man))
    report = verify_corpus(c, workers=1)
    assert not report.ok
    assert any(p.where == "manifest.json" and words in p.message for p in report.problems), [
        p.line() for p in report.problems]


@pytest.mark.parametrize("size", ["drop", None, [312], ["a", "b"]])
def test_a_sample_json_without_a_usable_size_is_reported(corpus, tmp_path, size):
    """The images are checked against the JSON's size: a size that is not [w, h] is a
    finding, not a check silently skipped."""
    c = copy_corpus(corpus, tmp_path / "c")
    row = pq.read_table(c / "samples.parquet").to_pylist()[0]
    key, shard = row["key"], row["shard"]

    def edit(name: str, data: bytes):
        if name == f"{key}.json":
            meta = json.loads(data)
            if size == "drop":
                del meta["size"]
            else:
                meta["size"] = size
            data = json.dumps(meta).encode()
        return [(name, data)]

    rewrite_shard(c, shard, edit)
    report = verify_corpus(c, workers=1)
    assert [(p.where, p.kind) for p in report.problems] == [(shard, "corrupt")], [
        p.line() for p in report.problems]
    assert key in report.problems[0].message and "size" in report.problems[0].message


def test_a_nan_valid_fraction_is_reported(corpus, tmp_path):
    """JSON allows NaN: a NaN valid_fraction compares unequal to nothing, so it passed."""
    c = copy_corpus(corpus, tmp_path / "c")
    keys = [r["key"] for r in pq.read_table(c / "samples.parquet").to_pylist()
            if r["shard"] == DAMAGED]

    def edit(name: str, data: bytes):
        if name == f"{keys[1]}.json":
            meta = json.loads(data)
            meta["valid_fraction"] = float("nan")
            data = json.dumps(meta).encode()
        return [(name, data)]

    rewrite_shard(c, DAMAGED, edit)
    msgs = [p.message for p in verify_corpus(c, workers=1).problems]
    assert any(keys[1] in m and "valid fraction" in m for m in msgs), msgs


def _add_unknown_member(key: str, *, drop: str | None = None, at_end: bool = False):
    """A rewrite_shard edit: ``KEY.extra.bin`` after ``KEY.json`` (or after the last member),
    optionally without ``KEY.<drop>``."""
    state = {"n": 0}

    def edit(name: str, data: bytes):
        state["n"] += 1
        out = [] if name == f"{key}.{drop}" else [(name, data)]
        if (name == f"{key}.json" and not at_end) or (at_end and state["n"] == state["last"]):
            out.append((f"{key}.extra.bin", bytes(range(256)) * 4))
        return out

    return edit, state


def _members_of(c: Path, shard: str) -> int:
    with tarfile.open(c / "shards" / shard) as tf:
        return len(tf.getmembers())


def test_an_unknown_member_is_ignored_and_noted(corpus, tmp_path, capsys):
    """CORPUS.md: readers look members up by name and must ignore members they do not know, so
    the format can grow. A shard with KEY.extra.bin (and the manifest's hash and size of that
    shard) verifies clean, and the report names the member."""
    c = copy_corpus(corpus, tmp_path / "c")
    key = next(r["key"] for r in pq.read_table(c / "samples.parquet").to_pylist()
               if r["shard"] == DAMAGED)
    edit, state = _add_unknown_member(key)
    state["last"] = _members_of(c, DAMAGED)
    rewrite_shard(c, DAMAGED, edit)
    report = verify_corpus(c, workers=1)
    assert report.ok, [p.line() for p in report.problems]
    assert report.samples == 95 and report.unknown_members == 1
    assert [(n.where, n.kind) for n in report.notes] == [(DAMAGED, "note")]
    assert ".extra.bin (1)" in report.notes[0].message
    assert cli.main(["verify", str(c)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"NOTE     {DAMAGED}: 1 member(s) of unknown name ignored"), out
    assert out[-1].startswith("verify OK: 5 shard(s), 95 samples")
    assert out[-1].endswith("; 1 unknown member(s) ignored"), out
    assert cli.main(["verify", str(c), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["problems"] == [] and data["unknown_members"] == 1
    assert format_report(report).count(".extra.bin") == 1


@pytest.mark.parametrize(("drop", "at_end", "words"), [
    ("jpg", False, "missing member(s) .jpg"),       # the known members keep their checks
    (None, True, "members not contiguous"),         # WebDataset would make it a sample of its own
])
def test_an_unknown_member_does_not_hide_a_broken_sample(corpus, tmp_path, drop, at_end, words):
    c = copy_corpus(corpus, tmp_path / "c")
    keys = [r["key"] for r in pq.read_table(c / "samples.parquet").to_pylist()
            if r["shard"] == DAMAGED]
    edit, state = _add_unknown_member(keys[0], drop=drop, at_end=at_end)
    state["last"] = _members_of(c, DAMAGED)
    rewrite_shard(c, DAMAGED, edit)
    report = verify_corpus(c, workers=1)
    assert {p.where for p in report.problems} == {DAMAGED}, [p.line() for p in report.problems]
    assert any(p.kind == "corrupt" and keys[0] in p.message and words in p.message
               for p in report.problems), [p.line() for p in report.problems]


def test_a_dot_in_the_key_is_still_named(tmp_path):
    """``film.v2_00000001.jpg``: WebDataset makes it member ``.v2_00000001.jpg`` of sample
    ``film``, which lacks its own members; the report says why."""
    shard = tmp_path / "x-00000.tar"
    with tarfile.open(shard, "w") as tf:
        for ext in ("disp.png", "jpg", "json"):
            info = tarfile.TarInfo(f"film.v2_00000001.{ext}")
            info.size = 2
            tf.addfile(info, io.BytesIO(b"{}"))
    check = check_shard(str(shard), None, None, "film")
    assert check.keys == ["film"] and len(check.problems) == 1, check.problems
    assert "missing member(s) .jpg, .disp.png, .json" in check.problems[0]
    assert "a dot in the key" in check.problems[0]
