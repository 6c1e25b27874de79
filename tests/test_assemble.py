"""Film assembly (``filmmine.corpus.assemble.assemble_film``): a film's staged work units ->
its shards, tables and record.

A small synthetic film (a textured shot, a dark one, a textured one) is mined once into three
staged units by ``mine_unit``; each test assembles a copy of that staging.
"""

from __future__ import annotations

import bisect
import itertools
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from filmmine import synth
from filmmine.corpus.assemble import assemble_film, film_record_path
from filmmine.corpus.reader import iter_samples
from filmmine.corpus.shards import sha256_file
from filmmine.corpus.staging import UnitMarker, WorkUnit, unit_paths
from filmmine.media.probe import ProbeResult, probe_film
from filmmine.recipe import apply_overrides, load_recipe
from filmmine.run.plan import plan_units, unit_context
from filmmine.run.unit import mine_unit

FILM = "f"
SPEC = synth.FilmSpec(shots=(synth.ShotSpec("textured", 60, seed=1),
                             synth.ShotSpec("dark", 24, seed=2),
                             synth.ShotSpec("textured", 36, seed=3)),
                      view_width=320, view_height=180, seed=5)
N = synth.n_frames(SPEC)   # 120
DIGEST = "0123abcd"


@dataclass
class Staged:
    probe: ProbeResult
    units: list[WorkUnit]
    recipe: dict
    work: Path                   # the staging as mine_unit left it (never assembled)
    markers: list[UnitMarker]    # per unit
    samples: list[list[dict]]    # per unit, as staged
    source: dict


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Staged:
    root = tmp_path_factory.mktemp("assemble")
    film = root / "f.mp4"
    synth.write_film(SPEC, film, "sbs")
    probe = probe_film(FILM, (str(film),), "sbs")
    recipe = load_recipe("default")
    units = plan_units(probe, 2.0, lead=unit_context(probe.fps, recipe)[0])
    assert len(units) == 3 and units[0].start == 0 and units[-1].end == N
    assert all(u.end == v.start for u, v in itertools.pairwise(units))
    work = root / "staging"
    markers = [mine_unit(probe, u, recipe, work) for u in units]
    samples = [[x.as_dict() for x in iter_samples(unit_paths(work, u)[0])] for u in units]
    source = {"input": str(film), "paths": [str(film)]}
    return Staged(probe, units, recipe, work, markers, samples, source)


def out_with(staged: Staged, out: Path) -> Path:
    """A corpus directory holding a copy of the film's staged units, as a run leaves them."""
    shutil.copytree(staged.work, out / ".work" / FILM)
    return out


def assemble(staged: Staged, out: Path, **output) -> dict:
    rec = apply_overrides(staged.recipe, {"output": output}) if output else staged.recipe
    return assemble_film(out, staged.probe, staged.units, rec, DIGEST, staged.source)


def as_json(record: dict) -> dict:
    """A record as its file holds it (the probe's tuples as lists)."""
    return json.loads(json.dumps(record))


def files_under(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in sorted(out.rglob("*")) if p.is_file()}


def shard_samples(out: Path, record: dict) -> list[tuple[str, dict]]:
    return [(s["name"], x) for s in record["shards"]
            for x in (y.as_dict() for y in iter_samples(out / "shards" / s["name"]))]


def test_shards_hold_exactly_the_units_accepted_samples_in_key_order(staged, tmp_path):
    """Shards of at most 4 samples: every sample the units staged, once, in key order (the
    units' order), with the staged bytes and its shot's index added to its JSON; the tables
    and the record agree with the shards and with the units' markers; the staging is gone."""
    out = out_with(staged, tmp_path / "out")
    record = assemble(staged, out, shard_max_samples=4)

    staged_keys = [s["__key__"] for u in staged.samples for s in u]
    assert len(staged_keys) == sum(m.samples for m in staged.markers) >= 8
    got = shard_samples(out, record)
    keys = [s["__key__"] for _, s in got]
    assert keys == staged_keys == sorted(set(keys))
    assert [s["name"] for s in record["shards"]] == \
        [f"{FILM}-{i:05d}.tar" for i in range(-(-len(keys) // 4))]
    assert sorted(p.name for p in (out / "shards").iterdir()) == \
        [s["name"] for s in record["shards"]]
    for s in record["shards"]:
        path = out / "shards" / s["name"]
        assert s["samples"] == sum(1 for name, _ in got if name == s["name"]) <= 4
        assert (s["bytes"], s["sha256"]) == (path.stat().st_size, sha256_file(path))

    cuts = synth.cut_frames(SPEC)                      # the film's truth: [60, 84]
    assert record["cuts"] == cuts and record["transitions"] == []
    by_key = {s["__key__"]: s for u in staged.samples for s in u}
    for _, s in got:
        before = by_key[s["__key__"]]
        assert {k: v for k, v in s.items() if k != "json"} == \
            {k: v for k, v in before.items() if k != "json"}
        meta, was = json.loads(s["json"]), json.loads(before["json"])
        assert meta.pop("shot_index") == bisect.bisect_right(cuts, meta["frame_index"])
        assert meta == was

    rows = pq.read_table(out / "films" / f"{FILM}.samples.parquet").to_pylist()
    assert [(r["key"], r["shard"]) for r in rows] == [(s["__key__"], n) for n, s in got]
    frames = pq.read_table(out / "films" / f"{FILM}.frames.parquet").to_pylist()
    staged_rows = sorted((r for m in staged.markers for r in m.frames),
                         key=lambda r: r["frame_index"])
    assert [r["frame_index"] for r in frames] == [r["frame_index"] for r in staged_rows]
    assert [r["key"] for r in frames if r["accepted"]] == keys

    c = record["counts"]
    assert c["accepted"] == len(keys) == sum(m.samples for m in staged.markers)
    assert c["decoded"] == sum(m.decoded for m in staged.markers) == N
    assert c["candidates"] == len(staged_rows) == sum(len(m.frames) for m in staged.markers)
    assert (c["frames"], c["cuts"], c["shots"], c["transitions"]) == (N, 2, 3, 0)
    stages = Counter(r["stage"] for r in staged_rows)
    assert c["filtered"] == stages["filter"] > 0           # the dark shot's candidates
    assert c["sampled"] == len(staged_rows) - stages["sampling"]
    assert record["rejections"] == dict(Counter(r["reason"] for r in staged_rows
                                                if r["reason"] is not None))
    assert "dark" in record["rejections"]
    assert (record["units"], record["status"], record["reason"]) == (3, "ok", None)
    assert (record["recipe_digest"], record["source"]) == (DIGEST, staged.source)
    assert json.loads(film_record_path(out, FILM).read_text()) == as_json(record)
    assert not (out / ".work" / FILM).exists()


def test_assembly_gives_the_same_bytes_twice_and_once_done_is_kept(staged, tmp_path):
    """Two corpora assembled from the same staging hold the same bytes. Assembling a film
    whose record exists returns that record and writes nothing (the record is the resume
    marker). Assembled again after a crash that left its shards but no record, and a shard of
    an earlier mining that made more: the same bytes, the extra shard gone, another film's
    shard kept."""
    a = out_with(staged, tmp_path / "a")
    b = out_with(staged, tmp_path / "b")
    rec_a = assemble(staged, a, shard_max_samples=4)
    rec_b = assemble(staged, b, shard_max_samples=4)
    assert as_json(rec_a) == as_json(rec_b)
    first = files_under(a)
    assert first == files_under(b) and len(first) >= 5   # shards, two tables, the record

    assert assemble(staged, a, shard_max_samples=4) == as_json(rec_a)
    assert files_under(a) == first

    c = out_with(staged, tmp_path / "c")
    (c / "shards").mkdir()
    (c / "shards" / f"{FILM}-00000.tar").write_bytes(b"half a shard")
    (c / "shards" / f"{FILM}-00009.tar").write_bytes(b"from an earlier mining")
    (c / "shards" / f"{FILM}-2-00000.tar").write_bytes(b"film f-2's")
    assert as_json(assemble(staged, c, shard_max_samples=4)) == as_json(rec_a)
    assert files_under(c) == {**first, f"shards/{FILM}-2-00000.tar": b"film f-2's"}


@pytest.mark.parametrize("missing", ["marker", "tar"])
def test_a_missing_unit_fails_the_assembly_and_leaves_no_partial_film(staged, tmp_path,
                                                                      missing):
    """A unit's marker (or its staged samples) gone: the assembly raises instead of making a
    film of the other units; no record, shard or table is left, and the other units stay
    staged for the rerun."""
    out = out_with(staged, tmp_path / "out")
    tar, marker = unit_paths(out / ".work" / FILM, staged.units[1])
    (marker if missing == "marker" else tar).unlink()
    with pytest.raises(FileNotFoundError):
        assemble(staged, out)
    assert not film_record_path(out, FILM).exists()
    assert [p for p in out.rglob("*") if p.is_file() and ".work" not in p.parts] == []
    for u in (staged.units[0], staged.units[2]):
        assert all(p.is_file() for p in unit_paths(out / ".work" / FILM, u))


def test_the_shot_quota_counts_each_shot_across_units(staged, tmp_path):
    """``sampling.max_per_shot = 1`` at assembly: the first shot spans two units, each of
    which kept its own samples; the film keeps one sampled candidate per shot (the first in
    frame order), the others become ``shot_quota`` rows and their samples leave the shards."""
    out = out_with(staged, tmp_path / "out")
    rec = apply_overrides(staged.recipe, {"sampling": {"max_per_shot": 1}})
    record = assemble_film(out, staged.probe, staged.units, rec, DIGEST, staged.source)

    cuts = synth.cut_frames(SPEC)
    rows = sorted((r for m in staged.markers for r in m.frames),
                  key=lambda r: r["frame_index"])
    first_of_shot: dict[int, dict] = {}
    for r in rows:
        if r["stage"] != "sampling":
            first_of_shot.setdefault(bisect.bisect_right(cuts, r["frame_index"]), r)
    kept = [r["key"] for r in first_of_shot.values() if r["accepted"]]
    sampled = sum(1 for r in rows if r["stage"] != "sampling")
    # the first shot's samples were staged by two units, each under its own count
    shot0 = [u.index for u, samples in zip(staged.units, staged.samples, strict=True)
             if any(json.loads(x["json"])["frame_index"] < cuts[0] for x in samples)]
    assert shot0 == [0, 1] and len(kept) == 2   # one per textured shot, none of the dark one

    keys = [s["__key__"] for _, s in shard_samples(out, record)]
    assert keys == kept
    assert record["counts"]["accepted"] == 2
    assert record["rejections"]["shot_quota"] == sampled - len(first_of_shot)
    frames = pq.read_table(out / "films" / f"{FILM}.frames.parquet").to_pylist()
    assert [r["key"] for r in frames if r["accepted"]] == kept
