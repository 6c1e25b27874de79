"""filmmine.tools.bench_disparity (its loaders in bench_data) and ``filmmine bench-disparity``:
loaders, metrics, the report."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED

from filmmine.cli import main
from filmmine.tools.bench_data import (
    default_data_dir,
    discover,
    load_middlebury,
    read_pfm,
    synthetic_pairs,
)
from filmmine.tools.bench_disparity import Row, evaluate, format_table

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared data at {SHARED}")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_evaluate_counts_only_pixels_with_both() -> None:
    gt = np.array([[10.0, 10.0, 10.0, np.nan]], np.float32)
    d = np.array([[10.5, 11.5, np.nan, 3.0]], np.float32)     # errors 0.5, 1.5; 1 unlabelled
    m = evaluate(d, gt)
    assert m["bad1"] == pytest.approx(50.0) and m["bad2"] == 0.0 and m["bad4"] == 0.0
    assert m["epe"] == pytest.approx(1.0)
    assert m["density"] == pytest.approx(200 / 3)             # 2 of 3 ground-truth pixels
    v = np.array([[-0.2, -0.4, 0.0, 0.0]], np.float32)
    dy = np.full_like(v, -0.3)
    assert evaluate(d, gt, v, dy)["vepe"] == pytest.approx(0.1)
    assert np.isnan(evaluate(np.full_like(gt, np.nan), gt)["epe"])


def test_the_default_data_folder_lies_beside_the_repository(monkeypatch) -> None:
    """../shared/data, wherever the loaders' module sits in the package."""
    monkeypatch.delenv("FILMMINE_DATA", raising=False)
    assert default_data_dir() == Path(__file__).resolve().parents[2] / "shared" / "data"


def test_pfm_round_trip(tmp_path) -> None:
    """Bottom row first on disk, top row first in memory; +inf survives."""
    img = np.array([[1.0, 2.0, np.inf], [4.0, 5.0, 6.0]], np.float32)
    path = tmp_path / "x.pfm"
    with path.open("wb") as f:
        f.write(b"Pf\n3 2\n-1.0\n")
        f.write(np.flipud(img).astype("<f4").tobytes())
    assert np.array_equal(read_pfm(path), img)
    (tmp_path / "bad.pfm").write_bytes(b"PF\n1 1\n-1\n0000")
    with pytest.raises(ValueError, match="PFM"):
        read_pfm(tmp_path / "bad.pfm")


def test_synthetic_pairs_have_exact_truth() -> None:
    pairs = synthetic_pairs(3, (160, 90))
    assert len(pairs) == 3 and not any(p.real for p in pairs)
    for p in pairs:
        assert p.left.shape == p.right.shape == p.gt.shape == (90, 160)
        assert p.left.dtype == np.uint8 and np.isfinite(p.gt).mean() > 0.9


@needs_shared
def test_discovers_the_shared_pairs() -> None:
    """Every real set with ground truth in ../shared/data: MiddEval3's 10 scenes (the imperfect
    Motorcycle beside trainingQ's nine), Middlebury 2001/2003 with each scene's 8-bit scale
    (SOURCES.md: teddy 12.5-52.75 px, tsukuba 5-14, venus 3-19.75), Cones, KITTI, Argoverse
    (sparse: 0.73 % of pixels, 6.1-175.5 px)."""
    found = discover([SHARED])
    pairs = {f"{p.dataset}/{p.name}" if p.dataset in ("middeval3", "middlebury2001_2003")
             else p.dataset: p for p in found}
    assert len(found) == len(pairs)
    assert {k for k in pairs if k.startswith("middeval3/")} == {
        f"middeval3/{s}" for s in ("Motorcycle", "ArtL", "MotorcycleE", "Piano", "PianoL",
                                   "Playtable", "PlaytableP", "Recycle", "Shelves", "Teddy")}
    assert {"middlebury2003_cones", "kitti2015_000046", "argoverse"} <= set(pairs)
    for scene, lo, hi in (("teddy", 12.5, 52.75), ("tsukuba", 5.0, 14.0), ("venus", 3.0, 19.75)):
        gt = pairs[f"middlebury2001_2003/{scene}"].gt
        assert (np.nanmin(gt), np.nanmax(gt)) == (pytest.approx(lo, abs=0.3),
                                                 pytest.approx(hi, abs=0.3)), scene
    argo = pairs["argoverse"].gt
    assert np.isfinite(argo).mean() == pytest.approx(0.0073, abs=0.001)
    assert np.nanmax(argo) == pytest.approx(175.5, abs=0.5)
    moto = pairs["middeval3/Motorcycle"]
    assert moto.gt_dy is not None and moto.left.shape == (497, 741)
    assert np.nanmin(moto.gt) >= 9 and np.nanmax(moto.gt) <= 64          # SOURCES.md: 9-63
    assert np.nanmedian(moto.gt_dy) == pytest.approx(-0.24, abs=0.02)
    kitti = pairs["kitti2015_000046"]
    assert np.isfinite(kitti.gt).mean() == pytest.approx(0.118, abs=0.01)  # sparse LiDAR
    cones = pairs["middlebury2003_cones"]
    assert np.nanmax(cones.gt) == pytest.approx(55.0, abs=0.5)
    assert np.array_equal(load_middlebury(SHARED / "middlebury2014_motorcycle_imperfect").gt,
                          moto.gt, equal_nan=True)


def test_table_formats_missing_values() -> None:
    row = Row("dis", "x", 1, 1.0, 2.0, 3.0, 0.5, 90.0, float("nan"), 12.0, 80.0, "cpu")
    text = format_table([row])
    head, line = text.splitlines()
    assert head.split()[:4] == ["backend", "dataset", "pairs", "bad-1%"]
    assert line.split()[8] == "-"
    assert len(line) <= len(head) + 1


def test_cli_json_report(capsys) -> None:
    code = main(["bench-disparity", "--no-real", "--synthetic", "2", "--synthetic-size",
                 "160x90", "--backends", "dis,sgbm,raft", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["backend"]: r for r in report["rows"]}
    assert set(rows) == {"dis", "sgbm"}
    assert "raft" in report["skipped"]                 # no weights given: said, not fatal
    for r in rows.values():
        assert r["dataset"] == "synthetic_160x90" and r["pairs"] == 2
        assert 0 <= r["bad2"] <= 100 and r["density"] > 50 and r["pairs_per_s"] > 0


def test_cli_table_and_bad_options(capsys) -> None:
    assert main(["bench-disparity", "--no-real", "--synthetic", "1", "--synthetic-size",
                 "160x90", "--backends", "dis", "--set", "work_width=80"]) == 0
    out = capsys.readouterr().out
    assert "synthetic_160x90" in out and "density" in out
    assert main(["bench-disparity", "--no-real", "--synthetic", "1", "--set", "nope=1"]) == 2
    assert "unknown [disparity] keys" in capsys.readouterr().err


def test_cli_sweep_gives_one_row_per_value(capsys) -> None:
    """--sweep runs each backend once per value of a key: a stricter SGBM uniqueness margin
    labels fewer pixels (the trade-off the table shows)."""
    code = main(["bench-disparity", "--no-real", "--synthetic", "2", "--synthetic-size",
                 "160x90", "--backends", "sgbm", "--sweep", "sgbm_uniqueness=5,40", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sweep"] == {"sgbm_uniqueness": [5, 40]}
    loose, strict = report["rows"]
    assert (loose["setting"], strict["setting"]) == ("sgbm_uniqueness=5", "sgbm_uniqueness=40")
    assert strict["density"] < loose["density"]
    assert main(["bench-disparity", "--no-real", "--synthetic", "1", "--synthetic-size",
                 "160x90", "--backends", "sgbm", "--sweep", "lr_max_px=0.5,2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["backend", "setting"]
    assert [ln.split()[1] for ln in lines[1:3]] == ["lr_max_px=0.5", "lr_max_px=2"]
    assert main(["bench-disparity", "--no-real", "--synthetic", "1", "--sweep", "nope=1,2"]) == 2
    assert "unknown [disparity] key in --sweep" in capsys.readouterr().err


def test_occlusion_metrics_split_the_ground_truth() -> None:
    """bad-2 and density over the ground truth both views see, and the occluded share."""
    gt = np.array([[10.0, 10.0, 10.0, 10.0, np.nan]], np.float32)
    occluded = np.array([[False, False, False, True, True]])
    d = np.array([[10.5, 13.0, np.nan, 20.0, 5.0]], np.float32)
    m = evaluate(d, gt, occluded=occluded)
    assert m["bad2"] == pytest.approx(200 / 3) and m["density"] == pytest.approx(75.0)
    assert m["bad2_nocc"] == pytest.approx(50.0)              # 13.0 is bad, 10.5 is not
    assert m["density_nocc"] == pytest.approx(200 / 3)        # 2 of 3 visible pixels
    assert m["occluded"] == pytest.approx(25.0)               # 1 of 4 ground-truth pixels
    assert m["bad2_occ"] == pytest.approx(100.0)
    assert np.isnan(evaluate(d, gt)["bad2_nocc"])


@needs_shared
def test_middlebury_occlusion_masks_are_read() -> None:
    """MiddEval3's mask0nocc.png (128 = occluded) and Cones' occlusion.png (255 = visible):
    about a ninth of each pair's ground truth is seen by the left view only."""
    from filmmine.tools.bench_data import load_middlebury2003

    for p in (load_middlebury(SHARED / "middlebury2014_motorcycle_imperfect"),
              load_middlebury2003(SHARED / "middlebury2003_cones")):
        assert p.occluded is not None and p.occluded.shape == p.gt.shape
        share = (p.occluded & np.isfinite(p.gt)).sum() / np.isfinite(p.gt).sum()
        assert 0.08 < share < 0.15, (p.name, share)
        # occluded pixels sit at depth edges: most have a visible pixel within 3 px
        near = cv2.dilate((~p.occluded).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        assert (near[p.occluded]).mean() > 0.5


def test_table_shows_occlusion_columns_in_a_sweep_too() -> None:
    row = Row("dis_sgbm", "real", 4, 7.7, 3.0, 1.6, 0.57, 86.6, 0.09, 160.0, 6.3, "cpu",
              "sgbm_uniqueness=25", 1.51, 93.6, 11.7, 56.7)
    head, line = format_table([row]).splitlines()
    assert head.split()[:3] == ["backend", "setting", "dataset"]
    assert "noc" in head and "occ.%" in head
    assert line.split()[1] == "sgbm_uniqueness=25" and "93.6" in line.split()


@needs_shared
def test_cli_prints_each_scene_and_each_sets_mean(capsys) -> None:
    """Middlebury 2001/2003 through dis_sgbm: a row per scene, the set's mean over them, and
    the real pairs' mean; the 8-bit scales right (bad-2 of a few % on these easy scenes)."""
    code = main(["bench-disparity", "--data", str(SHARED / "middlebury2001_2003"),
                 "--backends", "dis_sgbm", "--synthetic", "0", "--json"])
    assert code == 0
    rows = {r["dataset"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    scenes = [f"middlebury2001_2003/{s}" for s in ("teddy", "tsukuba", "venus")]
    assert set(scenes) | {"middlebury2001_2003 (mean)"} <= set(rows)
    mean = rows["middlebury2001_2003 (mean)"]
    assert mean["pairs"] == 3
    assert mean["bad2"] == pytest.approx(np.mean([rows[s]["bad2"] for s in scenes]))
    assert all(rows[s]["bad2"] < 5 and rows[s]["density"] > 80 for s in scenes), rows
