"""Frame verdicts on real footage: good frames kept, bad ones rejected for the right reason.

Truth: real rectified stereo from ../shared/data (SouthKensington's indoor video, the cut clips
in three layouts, Middlebury 2001/2003) and negatives made from it with a known defect (the
right view moved down, rolled; a mono copy), the raw unrectified OAK-D video. Runs the stages
as a work unit does (``filmmine.tools.bench_checks.judge``: crop, filters, disparity checks).
"""

from __future__ import annotations

import collections
import json

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import REAL_CLIPS, SHARED

from filmmine.recipe import load_recipe
from filmmine.run.unit import backend_for
from filmmine.stages import filters
from filmmine.tools import bench_check_set as cset
from filmmine.tools import bench_checks as bc

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared data at {SHARED}")

SK = SHARED / "southkensington_sv"


@pytest.fixture(scope="module")
def sk() -> list[cset.Pair]:
    pairs = cset.southkensington(SHARED)
    if not pairs:
        pytest.skip(f"no SouthKensington frames in {SHARED}")
    return pairs


def judge_one(pair: cset.Pair, recipe_name: str = "default") -> bc.Verdict:
    recipe = load_recipe(recipe_name)
    return next(bc.judge([pair], {}, recipe, backend_for(recipe, "cpu")))


def test_an_indoor_frame_with_unmatched_walls_is_kept(sk) -> None:
    """SouthKensington (real indoor video, rectified): SGBM labels ~65 % of the frame (plain
    walls stay unmatched), all but a few % of them consistent. The default keeps it, with its
    evidence; the paper's rule (70 % of all pixels) rejects it as few_valid."""
    v = judge_one(sk[0])
    e = v.evidence
    assert v.accepted, (v.reason, e)
    assert e["consistency_rate"] > 0.9 and e["matchable_fraction"] < 0.8
    assert e["vertical_inliers"] >= 100
    assert abs(e["vertical_offset_px"]) < 0.5 and abs(e["vertical_rotation_deg"]) < 0.1
    assert e["vertical_field_exceed_fraction"] == 0.0
    paper = judge_one(sk[0], "paper")
    assert (paper.accepted, paper.reason) == (False, "few_valid")


@pytest.mark.parametrize(("group", "key", "want"), [
    ("shift_2px", "vertical_offset_px", 2.0), ("shift_3px", "vertical_offset_px", 3.0),
    ("rotate_0.5deg", "vertical_rotation_deg", -0.5), ("rotate_1deg", "vertical_rotation_deg",
                                                        -1.0)])
def test_a_misaligned_copy_is_rejected_with_its_measured_misalignment(sk, group, key, want):
    """The same frame with its right view moved: vertical_misaligned, and the fitted field
    names the move (offset within 0.2 px, roll within 0.05 deg)."""
    pair = cset.Pair(group, "sk0", sk[0].left, sk[0].right, False,
                     perturb=cset.PERTURBATIONS[group])
    v = judge_one(pair)
    assert (v.accepted, v.reason) == (False, "vertical_misaligned")
    assert v.evidence[key] == pytest.approx(want, abs=0.2 if key.endswith("px") else 0.05)


def test_a_mono_copy_and_the_raw_unrectified_video_are_rejected(sk) -> None:
    mono = judge_one(cset.Pair("mono", "sk0", sk[0].left, sk[0].left.copy(), False))
    assert (mono.accepted, mono.reason) == (False, "mono")
    _, neg = cset.oakd(SHARED)
    if not neg:
        pytest.skip("no OAK-D video")
    raw = judge_one(neg[5])
    assert (raw.accepted, raw.reason) == (False, "vertical_misaligned")
    assert abs(raw.evidence["vertical_offset_px"]) > 3 or \
        abs(raw.evidence["vertical_rotation_deg"]) > 1


def test_a_figure_walking_through_a_static_shot_is_not_frozen(sk) -> None:
    """SouthKensington's camera is static while a person walks in the background: no frame
    is frozen against the one before (the walker moves blocks by 2+ grey levels where the
    frame's mean changes by < 1); the same frame again is."""
    cfg = load_recipe()["filters"]
    greys = [filters.luma(p.left) for p in sk]
    for i in range(1, len(sk)):
        s = filters.score_frame(sk[i].left, sk[i].right, greys[i - 1])
        assert filters.decide(s, cfg) is None, (i, s["frozen_diff"], s["motion"])
    again = filters.score_frame(sk[3].left, sk[3].right, greys[3])
    assert filters.decide(again, cfg) == "frozen"
    # a static scene in which one 160 px patch (3 % of the frame) changes: mean change < 0.5
    still = greys[0].copy()
    moved = still.copy()
    patch = moved[100:260, 200:360].astype(np.int16) + 12
    moved[100:260, 200:360] = np.clip(patch, 0, 255).astype(np.uint8)
    s = filters.score_frame(sk[0].left, sk[0].right, still, (moved, filters.luma(sk[0].right)))
    assert s["frozen_diff"] < cfg["frozen_max_diff"] and s["motion"] > 5
    assert filters.decide(s, cfg) is None


@pytest.fixture(scope="module")
def clips_corpus(tmp_path_factory):
    """The three cut clips (one scene, three layouts) mined with the default recipe."""
    from filmmine.run.extract import extract

    files = [REAL_CLIPS / f for f in ("sbs_cut_clip.mp4", "sbs_cut_clip_half.mp4",
                                      "tb_cut_clip.mp4")]
    if not all(f.is_file() for f in files):
        pytest.skip("no cut clips")
    out = tmp_path_factory.mktemp("clips")
    report = extract([str(f) for f in files], out, workers=2, progress=False)
    assert report.exit_code == 0, report.summary()
    return out


def test_the_yield_of_real_footage_does_not_depend_on_its_layout(clips_corpus) -> None:
    """Real rig footage, rectified: at least 80 % of the candidates not near a cut are
    accepted in each layout (full SBS, half SBS, top-bottom), the three within 10 % of each
    other, the indoor shot (frames 40-79) among them."""
    rows = pq.read_table(clips_corpus / "frames.parquet").to_pylist()
    cuts = json.loads((REAL_CLIPS / "cuts.json").read_text())["cut_frames"]
    rates = {}
    for film in ("sbs_cut_clip", "sbs_cut_clip_half", "tb_cut_clip"):
        mine = [r for r in rows if r["film"] == film and r["reason"] != "near_cut"]
        rates[film] = sum(r["accepted"] for r in mine) / len(mine)
        indoor = [r for r in mine if cuts[0] <= r["frame_index"] < cuts[1]]
        assert sum(r["accepted"] for r in indoor) >= 0.8 * len(indoor), film
    assert min(rates.values()) >= 0.8, rates
    assert max(rates.values()) - min(rates.values()) <= 0.1, rates


def test_each_verdicts_evidence_is_in_frames_parquet(clips_corpus) -> None:
    """Every frame that reached the disparity stage carries its evidence: the matchable
    fraction, the consistency rate over it, the fitted offset and roll with their inliers."""
    rows = pq.read_table(clips_corpus / "frames.parquet").to_pylist()
    judged = [r for r in rows if r["stage"] in ("disparity", "accepted")]
    assert len(judged) >= 150
    for r in judged:
        assert 0 < r["matchable_fraction"] <= 1 and 0.85 <= r["consistency_rate"] <= 1
        assert r["vertical_inliers"] >= 30 and abs(r["vertical_offset_px"]) < 1.0
        assert r["vertical_rotation_deg"] is not None and r["vertical_residual_px"] < 1.0
    samples = pq.read_table(clips_corpus / "samples.parquet").to_pylist()
    assert all(s["consistency_rate"] >= 0.85 and s["vertical_offset_px"] is not None
               for s in samples)


def test_a_film_without_samples_says_why_in_the_summary(tmp_path) -> None:
    """The top-bottom clip mined as side-by-side (a wrong --layout): no sample, and the
    summary's line says what rejected its frames (unrelated halves: inconsistent)."""
    from filmmine.run.extract import extract

    clip = REAL_CLIPS / "tb_cut_clip.mp4"
    if not clip.is_file():
        pytest.skip("no cut clips")
    report = extract([str(clip)], tmp_path / "out", layout="sbs", workers=1, progress=False)
    [line] = [ln for ln in report.summary().splitlines() if ln.startswith("  ok")]
    assert "0 samples from 60 candidates" in line
    assert line.split(" - ")[-1].startswith("no samples: inconsistent "), line


@needs_shared
def test_bench_checks_prints_each_recipes_rates_in_one_run(capsys) -> None:
    """`filmmine bench-checks` over a few groups and two recipes: the JSON has a row per
    group and recipe with the rate that counts (acceptance of positives, rejection of
    negatives) and the labels of the accepted ground-truth frames."""
    from filmmine.cli import main

    code = main(["bench-checks", "--groups", "middlebury01_03,shift_3px,mono",
                 "--recipes", "default,paper", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    for name in ("default", "paper"):
        g = report["recipes"][name]["groups"]
        assert g["middlebury01_03"]["rate"] == 1.0 and g["middlebury01_03"]["positive"]
        assert g["shift_3px"]["rate"] == 1.0 and not g["shift_3px"]["positive"]
        assert g["mono"]["reasons"] == {"mono": g["mono"]["frames"]}
        assert report["recipes"][name]["gt_mean"]["bad2"] < 3.0
    reasons = collections.Counter(report["recipes"]["default"]["groups"]["shift_3px"]["reasons"])
    assert set(reasons) == {"vertical_misaligned"}
    assert main(["bench-checks", "--groups", "nonsense"]) == 2


@needs_shared
def test_cv2_reads_what_bench_checks_loads() -> None:
    """The still positives load with their ground truth in the convention of SOURCES.md
    (d = x_left - x_right): warping the right view by the ground truth matches the left
    better than no shift does."""
    pairs = {p.name: p for p in cset.still_positives(SHARED) if p.gt is not None}
    assert {"teddy", "tsukuba", "venus", "cones", "Motorcycle"} <= set(pairs)
    for name in ("teddy", "tsukuba", "venus"):
        p = pairs[name]
        lg = cv2.cvtColor(p.left, cv2.COLOR_RGB2GRAY).astype(np.float32)
        rg = cv2.cvtColor(p.right, cv2.COLOR_RGB2GRAY).astype(np.float32)
        h, w = lg.shape
        xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        gt = np.nan_to_num(p.gt)
        warped = cv2.remap(rg, xs - gt, ys, cv2.INTER_LINEAR)
        ok = np.isfinite(p.gt)
        assert np.abs(warped - lg)[ok].mean() < 0.5 * np.abs(rg - lg)[ok].mean(), name
