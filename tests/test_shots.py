"""filmmine.stages.shots: cuts and dissolves found at the frames the truth says.

Truth: real_cut_clips/cuts.json (hard cuts at 40 and 80, a fast turn at 101 that is no cut) and
the synthetic film's sidecar (exact cut frames and dissolve range).
Measured (default recipe): all three real clips give cuts [40, 80] and no transition; the
content score is 35.5 at frame 40, 30.8 at 80 and at most 18.0 elsewhere (17.4 at the turn),
threshold 27.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_CLIPS

from filmmine import synth
from filmmine.media.decode import iter_frames
from filmmine.media.probe import ProbeResult, probe_film
from filmmine.recipe import load_recipe
from filmmine.stages.shots import ShotBoundaries, ShotTracker, dissolve_score

CLIPS = ["sbs_cut_clip.mp4", "sbs_cut_clip_half.mp4", "tb_cut_clip.mp4"]


def tracker_for(fps: float) -> ShotTracker:
    """A tracker with the default recipe's thresholds, as the pipeline builds it."""
    sh = load_recipe()["shots"]
    return ShotTracker(fps, content_threshold=sh["content_threshold"],
                       fade_threshold=sh["fade_threshold"],
                       dissolve_window_s=sh["dissolve_window_s"],
                       dissolve_threshold=sh["dissolve_threshold"])


def detect(probe: ProbeResult) -> tuple[ShotBoundaries, int]:
    tracker = tracker_for(probe.fps)
    last = -1
    for frame in iter_frames(probe, grid_step=10**6, lowres_width=160):
        tracker.push(frame.index, frame.lowres)
        last = frame.index
    return tracker.finish(last), last + 1


# --------------------------------------------------------------------------------------------
# Real clips


@pytest.mark.skipif(not REAL_CLIPS.is_dir(), reason=f"no shared data at {REAL_CLIPS}")
@pytest.mark.parametrize("clip", CLIPS)
def test_real_cuts_found_and_fast_turn_ignored(clip: str) -> None:
    truth = json.loads((REAL_CLIPS / "cuts.json").read_text())
    assert truth["cut_frames"] == [40, 80]
    probe = probe_film(clip, (str(REAL_CLIPS / clip),))
    bounds, decoded = detect(probe)
    assert decoded == truth["n_frames"] == 120
    cuts = bounds.cuts
    for c in truth["cut_frames"]:
        assert sum(abs(k - c) <= 1 for k in cuts) == 1, (c, cuts)
    assert not [k for k in cuts if abs(k - 101) <= 3], cuts  # the fast turn is no cut
    assert len(cuts) == len(truth["cut_frames"]), cuts  # and nothing else
    assert bounds.transitions == [], bounds.transitions


# --------------------------------------------------------------------------------------------
# Synthetic film: every kind of shot, one dissolve


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[dict, ShotBoundaries, int]:
    spec = synth.default_film_spec(shot_frames=24, seed=5)
    path = tmp_path_factory.mktemp("shots") / "film.mp4"
    sidecar = synth.write_film(spec, path, "sbs")
    bounds, decoded = detect(probe_film("film", (str(path),)))
    return sidecar, bounds, decoded


def test_synthetic_hard_cuts_exact(synthetic) -> None:
    """Every hard cut of the sidecar within +-1 frame, and no other cut."""
    sidecar, bounds, decoded = synthetic
    assert decoded == sidecar["n_frames"]
    truth = sidecar["cuts"]
    assert len(truth) == 7  # 9 shots, one joined by the dissolve instead
    for c in truth:
        assert sum(abs(k - c) <= 1 for k in bounds.cuts) == 1, (c, bounds.cuts)
    false = [k for k in bounds.cuts if min(abs(k - c) for c in truth) > 1]
    assert not false, (false, truth)


def test_synthetic_dissolve_is_a_transition(synthetic) -> None:
    """The dissolve range is covered by one detected transition; no transition elsewhere."""
    sidecar, bounds, _ = synthetic
    s, e = sidecar["dissolve"]
    assert [s, e] == [48, 60]
    covering = [(a, b) for a, b in bounds.transitions if a <= s and e <= b]
    assert len(covering) == 1, bounds.transitions
    a, b = covering[0]
    assert b - a <= (e - s) + 2 * 12  # no wider than the dissolve plus a window each side
    for t in bounds.transitions:
        assert t[0] < e and s < t[1], t  # every transition overlaps the true dissolve
    # no hard cut inside or at the edges of the dissolve
    assert not [k for k in bounds.cuts if s - 1 <= k <= e + 1]
    assert all(bounds.in_transition(f) for f in range(s, e))


# --------------------------------------------------------------------------------------------
# dissolve_score on arrays


@pytest.fixture(scope="module")
def two_shots() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 255, (45, 80, 3)).astype(np.float32)
    b = rng.uniform(0, 255, (45, 80, 3)).astype(np.float32)
    return a, b


def test_dissolve_midpoint_ratio_is_zero(two_shots) -> None:
    a, b = two_shots
    change, ratio = dissolve_score(a, 0.5 * (a + b), b)
    assert change == pytest.approx(float(np.abs(a - b).mean()))
    assert change > 50
    assert ratio == pytest.approx(0.0, abs=1e-6)
    _, off_centre = dissolve_score(a, 0.7 * a + 0.3 * b, b)
    assert off_centre == pytest.approx(0.2, abs=1e-3)


@pytest.mark.parametrize("middle_is", ["before", "after"])
def test_hard_cut_ratio_is_one_half(two_shots, middle_is: str) -> None:
    a, b = two_shots
    _, ratio = dissolve_score(a, a if middle_is == "before" else b, b)
    assert ratio == pytest.approx(0.5, abs=1e-6)


def test_static_window_has_no_change(two_shots) -> None:
    a, _ = two_shots
    change, ratio = dissolve_score(a, a, a)
    assert change == 0.0 and ratio == 0.0


# --------------------------------------------------------------------------------------------
# ShotBoundaries and the tracker on arrays


def test_boundaries_queries() -> None:
    b = ShotBoundaries(cuts=[24, 84], transitions=[(43, 65)])
    assert b.shot_begin(10) == 0 and b.shot_begin(24) == 24 and b.shot_begin(100) == 84
    assert b.shot_begin(5, default=-1) == -1
    # a shot also begins where a transition ends (the corpus's shot_index counts both)
    assert b.shot_begin(70) == 65 and b.shot_begin(30) == 24
    assert b.next_boundary(0) == 24 and b.next_boundary(24) == 43 and b.next_boundary(90) is None
    assert b.in_transition(43) and b.in_transition(64) and not b.in_transition(65)
    assert b.distance_to_boundary(30) == 6 and b.distance_to_boundary(70) == 5
    assert ShotBoundaries().distance_to_boundary(5) >= 10**6


def test_tracker_on_arrays_cut_and_no_cut() -> None:
    """Two static shots with a hard change at frame 30: one cut, exactly there."""
    rng = np.random.default_rng(2)
    a = rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)
    b = rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)
    t = tracker_for(24.0)
    for i in range(60):
        t.push(i, a if i < 30 else b)
    bounds = t.finish(59)
    assert bounds.cuts == [30] and bounds.transitions == []


def test_tracker_fade_through_black() -> None:
    """A scene faded to black over 6 frames, 10 black frames, faded back in: a cut where the
    picture comes back (fade-in frame 36, ThresholdDetector), at most one more where the
    black starts (frame 25), and none in the steady parts."""
    spec = synth.FilmSpec(shots=(synth.ShotSpec("textured", 2, seed=1),), view_width=160,
                          view_height=90)
    scene = synth.render_frame(spec, 0)[0][..., ::-1].astype(np.float32)  # BGR like decode
    alphas = [1.0] * 20 + [1 - k / 6 for k in range(1, 7)] + [0.0] * 10 + \
        [k / 6 for k in range(1, 7)] + [1.0] * 20
    black = [i for i, a in enumerate(alphas) if a == 0.0]
    assert (black[0], black[-1] + 1) == (25, 36)
    t = tracker_for(24.0)
    for i, a in enumerate(alphas):
        t.push(i, np.rint(scene * a).astype(np.uint8))
    cuts = t.finish(len(alphas) - 1).cuts
    assert any(abs(c - 36) <= 1 for c in cuts), cuts
    assert all(abs(c - 36) <= 1 or abs(c - 25) <= 1 for c in cuts), cuts


def test_boundaries_up_to_known_until_are_final(tmp_path: Path) -> None:
    """The documented contract: nothing at or before known_until changes afterwards."""
    shots = tuple(synth.ShotSpec("textured", 24, seed=i + 1) for i in range(3))
    path = tmp_path / "film.mp4"
    synth.write_film(synth.FilmSpec(shots=shots, dissolve_after=1, seed=5), path, "sbs")
    tracker = tracker_for(24.0)
    prev_known, prev_cuts, prev_trans = -1, set(), set()
    changed = []
    for frame in iter_frames(probe_film("f", (str(path),)), grid_step=10**6):
        tracker.push(frame.index, frame.lowres)
        b = tracker.boundaries
        cuts = set(b.cuts)
        trans = {f for s, e in b.transitions for f in range(s, e)}
        changed += [f for f in (cuts ^ prev_cuts) | (trans ^ prev_trans) if f <= prev_known]
        prev_known, prev_cuts, prev_trans = tracker.known_until, cuts, trans
    assert prev_trans, "the dissolve was not detected"
    assert not changed, sorted(changed)
