"""Work units: where a film is cut for parallel decoding, and what each cut costs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from filmmine.corpus.staging import WorkUnit
from filmmine.media.probe import ProbeResult, probe_film
from filmmine.media.pts_index import PtsIndex
from filmmine.recipe import load_recipe
from filmmine.run.plan import film_chunk_s, plan_units, unit_context

FPS = 24.0
N = 1440  # 60 s


def _probe(keyframes=None, open_gop=None, n: int = N, indexed: bool = True) -> ProbeResult:
    times = np.round(np.arange(n) * 1e6 / FPS).astype(np.int64)
    pts = PtsIndex.from_times(times, keyframes, open_gop) if indexed else None
    return ProbeResult(name="f", paths=("f.mp4",), streams=(), layout="sbs", layout_reason="",
                       frame_size=(640, 180), fps=FPS, n_frames=n, duration_s=n / FPS, pts=pts)


def _first_decoded(probe: ProbeResult, unit: WorkUnit, lead: int) -> int:
    """The frame the demuxer's seek lands on for a unit decoded from ``start - lead``."""
    seek_us, _ = probe.pts.seek_plan(unit.start - lead)
    return 0 if seek_us is None else int(np.searchsorted(probe.pts.times_us(), seek_us))


def _ranges(units: list[WorkUnit]) -> list[tuple[int, int]]:
    return [(u.start, u.end) for u in units]


def test_seams_move_to_where_the_decode_starts_on_a_keyframe():
    """The benchmark film's keyframes (at each cut, every 120 frames, and 48 and 96 after it):
    the nominal seam at 720 decodes from the keyframe at 648, 28 frames before the 676 it
    needs; the planned seam (740) starts its decode exactly on the keyframe at 696. The units
    still tile the film."""
    keys = np.sort(np.concatenate([np.arange(0, N, 120) + k for k in (0, 48, 96)]))
    probe = _probe(keys)
    lead = 44
    nominal = plan_units(probe, 30.0)
    assert _ranges(nominal) == [(0, 720), (720, 1440)]
    assert _first_decoded(probe, nominal[1], lead) == 648   # 28 frames for nothing
    units = plan_units(probe, 30.0, lead=lead)
    assert _ranges(units) == [(0, 740), (740, 1440)]
    assert _first_decoded(probe, units[1], lead) == units[1].start - lead == 696


def test_open_keyframes_are_not_seam_targets():
    """A seek to an open keyframe decodes from the one before it: not a free start."""
    keys = [0, 648, 696, 720, 1200]
    probe = _probe(keys, [False, False, True, False, False])
    units = plan_units(probe, 30.0, lead=44)
    assert _ranges(units) == [(0, 692), (692, 1440)]        # 648 + 44, not 696 + 44
    assert _first_decoded(probe, units[1], 44) == 648


def test_seams_stay_nominal_without_a_keyframe_near_or_an_index():
    """No keyframe within a quarter unit of the seam, no keyframe list, no timestamp index, or
    no lead given: the plain ranges."""
    far = _probe([0, 1200])
    assert _ranges(plan_units(far, 30.0, lead=44)) == [(0, 720), (720, 1440)]
    assert _ranges(plan_units(_probe(None), 30.0, lead=44)) == [(0, 720), (720, 1440)]
    assert _ranges(plan_units(_probe(indexed=False), 30.0, lead=44)) == [(0, 720), (720, 1440)]
    assert _ranges(plan_units(_probe(np.arange(0, N, 48)), 30.0)) == [(0, 720), (720, 1440)]
    assert _ranges(plan_units(_probe(np.arange(0, N, 48)), 0.0, lead=44)) == [(0, N)]


@pytest.mark.parametrize("chunk_s", [1.0, 2.0, 5.0, 13.0])
def test_many_seams_tile_the_film_in_order(chunk_s: float):
    """Irregular keyframes, short units: as many units as the nominal plan, in order, none
    empty, covering every frame once; each seam within a quarter unit of its nominal place and,
    where it moved, decoding from its keyframe."""
    rng = np.random.default_rng(3)
    keys = np.unique(np.concatenate([[0], rng.integers(1, N, 60)]))
    probe = _probe(keys)
    lead = 37
    nominal = plan_units(probe, chunk_s)
    units = plan_units(probe, chunk_s, lead=lead)
    assert len(units) == len(nominal)
    assert units[0].start == 0 and units[-1].end == N
    size = round(chunk_s * FPS)
    moved = 0
    for a, b, nom in zip(units[:-1], units[1:], nominal[1:], strict=True):
        assert a.end == b.start and a.start < a.end
        assert abs(b.start - nom.start) <= size // 4
        if b.start != nom.start:
            moved += 1
            assert b.start - lead in set(keys.tolist())
            assert _first_decoded(probe, b, lead) == b.start - lead
    assert moved > 0


def test_real_film_seams_decode_nothing_before_their_context(library):
    """The library's SBS film (libx264, keyframes at cuts and every 48 frames), 4 s units with
    the default recipe's context: every moved seam's decode starts on the frame it needs."""
    lib = json.loads((library / "library.json").read_text())
    entry = next(f for f in lib["films"] if f["name"] == "film_sbs")
    probe = probe_film("film_sbs", (str(library / entry["path"]),), "sbs")
    before, after = unit_context(probe.fps, load_recipe("default"))
    assert before > after > 0
    units = plan_units(probe, 4.0, lead=before)
    nominal = plan_units(probe, 4.0)
    assert len(units) == len(nominal) >= 3
    waste_nominal = sum(u.start - before - _first_decoded(probe, u, before) for u in nominal[1:])
    waste = sum(u.start - before - _first_decoded(probe, u, before) for u in units[1:])
    assert waste_nominal > 0 and waste == 0


def test_units_are_equal_and_no_longer_than_the_chunk():
    """A 95 s film in 30 s units: four of 23.75 s (570 frames), where plain 30 s steps left a
    5 s remainder paying a whole unit's context; a film of whole chunks is cut as before."""
    probe = _probe(n=round(95 * FPS))
    assert _ranges(plan_units(probe, 30.0)) == [(0, 570), (570, 1140), (1140, 1710),
                                                (1710, 2280)]
    assert _ranges(plan_units(_probe(n=1441), 30.0)) == [(0, 481), (481, 962), (962, 1441)]
    assert _ranges(plan_units(_probe(), 30.0)) == [(0, 720), (720, 1440)]
    assert _ranges(plan_units(_probe(n=100), 30.0)) == [(0, 100)]
    assert plan_units(_probe(n=0, indexed=False), 30.0) == []


def test_a_film_gets_shorter_units_only_to_fill_idle_workers():
    """``film_chunk_s``: the recipe's chunk unless the film should give more units than that
    makes; then duration / units, never below min_chunk_s, never above chunk_s."""
    assert film_chunk_s(60.0, 30.0, 5.0, 1) == 30.0          # enough films for the workers
    assert film_chunk_s(60.0, 30.0, 5.0, 2) == 30.0          # two 30 s units already
    assert film_chunk_s(60.0, 30.0, 5.0, 8) == 7.5           # one film, eight workers
    assert film_chunk_s(20.0, 30.0, 5.0, 8) == 5.0           # not below min_chunk_s
    assert film_chunk_s(600.0, 30.0, 5.0, 8) == 30.0         # long film: plenty of units
    assert film_chunk_s(60.0, 2.0, 5.0, 8) == 2.0            # a short chunk_s stays
    assert film_chunk_s(60.0, 0.0, 5.0, 8) == 0.0            # one unit stays one unit
    probe = _probe()                                         # 60 s
    assert len(plan_units(probe, film_chunk_s(60.0, 30.0, 5.0, 8))) == 8


def test_unit_slots_count_threads_or_gpus():
    """A cluster of two workers with two threads and one GPU each runs 4 units at once on the
    CPU and 2 on the GPUs (a unit holds a GPU)."""
    from distributed import Client, LocalCluster

    from filmmine.run.cluster import unit_slots

    with LocalCluster(n_workers=2, threads_per_worker=2, processes=False,
                      resources={"GPU": 1}, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        assert unit_slots(client, "cpu") == 4
        assert unit_slots(client, "cuda") == 2


def test_a_unit_builds_its_backend_while_decoding_and_still_fails_on_a_bad_one(tmp_path):
    """``backend_soon``: the model is built in a thread while the unit decodes (a built one is
    handed back at once, the same object). A recipe whose backend cannot be built (``raft``
    without weights) still fails the unit, even on a film where no candidate reaches the
    disparity stage (all dark), as when the backend was built before decoding."""
    from filmmine import synth
    from filmmine.run.unit import backend_for, backend_soon, mine_unit

    rec = load_recipe("default")
    built = backend_for(rec, "cpu")
    soon = backend_soon(rec, "cpu")
    assert soon.done() and soon.result() is built

    spec = synth.FilmSpec(shots=(synth.ShotSpec("dark", 36, seed=4),), view_width=160,
                          view_height=90, seed=4)
    film = tmp_path / "dark.mp4"
    synth.write_film(spec, film, "sbs")
    probe = probe_film("dark", (str(film),), "sbs")
    (unit,) = plan_units(probe, 0.0)
    marker = mine_unit(probe, unit, rec, tmp_path / "ok")
    rows = marker.frames
    assert rows and all(r["stage"] == "filter" and r["reason"] == "dark" for r in rows)
    assert "disparity" not in marker.timings          # no candidate needed the backend

    bad = tmp_path / "raft.toml"
    bad.write_text('base = "default"\n[disparity]\nbackend = "raft"\nraft_weights = ""\n')
    with pytest.raises(ValueError, match="raft_weights"):
        mine_unit(probe, unit, load_recipe(bad), tmp_path / "bad")
    assert not (tmp_path / "bad" / f"{unit.stem}.json").exists()
