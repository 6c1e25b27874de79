"""trainer.sources: the KITTI, Middlebury 2001/2003, ETH3D and NYU-style adapters on the real
sets in ../shared/data (laid out as each dataset is downloaded, with links into the shared
files, never copies), each label checked against the file read directly, and ``eval`` end to
end on each with a tiny checkpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_trainer_evaluate import tiny_checkpoint

from filmmine.cli import main as filmmine_main
from trainer import TrainerError
from trainer.sources import (
    SOURCES,
    DatasetSpec,
    Eth3dSource,
    Middlebury0103Source,
    NyuSource,
    build_source,
    detect_type,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
KITTI = SHARED / "kitti2015_000046"
MB0103 = SHARED / "middlebury2001_2003"
TEDDY_Q = SHARED / "middeval3_trainingQ" / "Teddy"
ETH3D = SHARED / "eth3d_twoview"
MOTO = SHARED / "middlebury2014_motorcycle_imperfect"


def needs(*paths: Path):
    missing = [str(p) for p in paths if not p.exists()]
    return pytest.mark.skipif(bool(missing), reason=f"shared data missing: {missing}")


def _link(dst: Path, src: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)
    return dst


def _pfm_direct(path: Path) -> np.ndarray:
    """A greyscale PFM parsed here, independently of trainer.sources: top row first."""
    data = path.read_bytes()
    head = data.split(b"\n", 3)
    assert head[0] == b"Pf"
    w, h = (int(v) for v in head[1].split())
    endian = "<" if float(head[2]) < 0 else ">"
    return np.frombuffer(head[3], endian + "f4").reshape(h, w)[::-1]


def _calib(path: Path) -> dict[str, float]:
    text = path.read_text()
    f = float(re.search(r"cam0=\[([\d.]+)", text).group(1))
    vals = dict(re.findall(r"^(\w+)=([\d.]+)$", text, re.M))
    return {"f": f, "baseline_mm": float(vals["baseline"]), "doffs": float(vals["doffs"])}


# ----------------------------------------------------------------------------- layouts

def kitti_tree(root: Path) -> Path:
    """KITTI 2015 as downloaded: training/image_2/NAME.png, training/disp_occ_0/NAME.png."""
    _link(root / "training" / "image_2" / "000046_10.png", KITTI / "image_2_000046_10.png")
    _link(root / "training" / "disp_occ_0" / "000046_10.png",
          KITTI / "disp_occ_0_000046_10.png")
    return root


def eth3d_tree(root: Path) -> Path:
    """ETH3D's two archives side by side: two_view_training/SCENE/im0.png and
    two_view_training_gt/SCENE/disp0GT.pfm. The shared ETH3D pairs carry no ground truth, so
    the scene with one is MiddEval3's Teddy (the same im0.png / disp0GT.pfm format, +inf =
    none); a real ETH3D scene without ground truth sits beside it."""
    _link(root / "two_view_training" / "Teddy" / "im0.png", TEDDY_Q / "im0.png")
    _link(root / "two_view_training_gt" / "Teddy" / "disp0GT.pfm", TEDDY_Q / "disp0GT.pfm")
    _link(root / "two_view_training" / "forest_2s" / "im0.png", ETH3D / "forest_2s" / "im0.png")
    return root


def nyu_tree(root: Path) -> tuple[Path, np.ndarray]:
    """An NYU-style folder (rgb_N.png beside sync_depth_N.png, 16-bit mm) from the real
    Middlebury 2014 Motorcycle: depth = baseline * f / (d + doffs) from its calibration.
    Returns the folder and the depth in metres (NaN where d has no ground truth)."""
    c = _calib(MOTO / "calib.txt")
    d = _pfm_direct(MOTO / "disp0GT.pfm")
    depth_m = np.where(np.isfinite(d), c["baseline_mm"] * c["f"] / (d + c["doffs"]) / 1000,
                       np.nan)
    mm = np.where(np.isfinite(depth_m), np.round(np.nan_to_num(depth_m) * 1000), 0)
    _link(root / "bike" / "rgb_00001.png", MOTO / "im0.png")
    assert cv2.imwrite(str(root / "bike" / "sync_depth_00001.png"), mm.astype(np.uint16))
    return root, depth_m


# ----------------------------------------------------------------------------- adapters

@needs(KITTI)
def test_kitti_layout_uint16_over_256(tmp_path):
    root = kitti_tree(tmp_path / "kitti")
    assert detect_type(str(root)) == "kitti"
    spec = DatasetSpec.parse(f"kitti:{root}")
    assert spec.scale == 1 / 256 and spec.label == "disparity"
    (s,) = list(build_source(spec))
    raw = cv2.imread(str(KITTI / "disp_occ_0_000046_10.png"), cv2.IMREAD_UNCHANGED)
    assert s.key == "000046_10" and s.image.shape == (375, 1242, 3)
    np.testing.assert_array_equal(s.valid, raw > 0)
    assert s.valid.mean() == pytest.approx(0.118, abs=0.001)  # sparse LiDAR
    y, x = np.argwhere(raw > 0)[0]
    assert s.disparity[y, x] == pytest.approx(raw[y, x] / 256.0)
    np.testing.assert_allclose(s.disparity[s.valid], raw[raw > 0] / 256.0, rtol=1e-6)
    assert 4.8 < s.disparity[s.valid].min() < 5.0 and 65.5 < s.disparity.max() < 66.0
    assert not s.disparity[~s.valid].any()


@needs(MB0103)
def test_middlebury_2001_2003_per_scene_scale(tmp_path):
    assert detect_type(str(MB0103)) == "middlebury0103"
    samples = {s.key: s for s in build_source(DatasetSpec(type="middlebury0103",
                                                          path=str(MB0103)))}
    assert sorted(samples) == ["teddy", "tsukuba", "venus"]
    for scene, label, divisor, valid_frac, lo, hi in [
        ("teddy", "disp2.png", 4, 0.980, 12.5, 52.75),
        ("tsukuba", "disp3.pgm", 16, 0.793, 5.0, 14.0),
        ("venus", "disp2.pgm", 8, 1.0, 3.0, 19.75),
    ]:
        s = samples[scene]
        raw = cv2.imread(str(MB0103 / scene / label), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(s.valid, raw > 0)
        np.testing.assert_allclose(s.disparity[s.valid], raw[raw > 0] / divisor)
        assert s.valid.mean() == pytest.approx(valid_frac, abs=0.001)
        assert (s.disparity[s.valid].min(), s.disparity.max()) == (lo, hi)
    # a scene the table does not know needs its scale
    _link(tmp_path / "mine" / "im2.png", MB0103 / "teddy" / "im2.png")
    _link(tmp_path / "mine" / "disp2.png", MB0103 / "teddy" / "disp2.png")
    with pytest.raises(TrainerError, match=r"no known disparity scale for scene\(s\) mine"):
        build_source(DatasetSpec(type="middlebury0103", path=str(tmp_path))).units()
    (s,) = list(build_source(DatasetSpec.parse(f"middlebury0103:{tmp_path},scale=0.25")))
    assert s.disparity.max() == 52.75


@needs(TEDDY_Q, ETH3D)
def test_eth3d_ground_truth_in_its_own_tree(tmp_path, caplog):
    root = eth3d_tree(tmp_path / "eth3d")
    assert detect_type(str(root)) == "eth3d"
    assert detect_type(str(root / "two_view_training")) == "eth3d"
    (s,) = list(Eth3dSource(DatasetSpec(type="eth3d", path=str(root))))
    assert "1 scene(s) without ground truth skipped: forest_2s" in caplog.text
    gt = _pfm_direct(TEDDY_Q / "disp0GT.pfm")
    assert s.key == "Teddy"
    np.testing.assert_array_equal(s.valid, np.isfinite(gt))
    assert (~s.valid).sum() == np.isinf(gt).sum() > 0  # +inf = no ground truth
    np.testing.assert_array_equal(s.disparity[s.valid], gt[np.isfinite(gt)])
    assert (s.disparity[s.valid].min(), s.disparity.max()) == (15.0, 52.75)
    # the shared ETH3D pairs alone: images without ground truth, said so
    with pytest.raises(TrainerError, match=r"5 scene\(s\) with im0.png but no disp0GT.pfm"):
        build_source(DatasetSpec(type="eth3d", path=str(ETH3D))).units()


@needs(MOTO)
def test_nyu_style_depth_in_millimetres(tmp_path):
    root, depth_m = nyu_tree(tmp_path / "nyu")
    assert detect_type(str(root)) == "nyu"
    spec = DatasetSpec(type="nyu", path=str(root))
    assert (spec.label, spec.cap, spec.scale) == ("depth", 10.0, None)
    (s,) = list(build_source(spec))
    assert s.key == "bike/rgb_00001"
    np.testing.assert_array_equal(s.valid, np.isfinite(depth_m))
    # the label is 1 / depth in metres: at the centre, the calibrated depth to within 0.5 mm
    y, x = 250, 370
    assert np.isfinite(depth_m[y, x]) and 2.0 < depth_m[y, x] < 5.0
    assert 1 / s.disparity[y, x] == pytest.approx(depth_m[y, x], abs=0.0005)
    np.testing.assert_allclose(1 / s.disparity[s.valid], depth_m[s.valid], atol=0.0005)


def test_nyu_style_namings(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (8, 10, 3), dtype=np.uint8)
    mm = np.full((8, 10), 2500, np.uint16)
    metres = np.full((8, 10), 4.0, np.float32)
    for img, dep in [("a/00001_colors.png", "a/00001_depth.png"),
                     ("b/rgb/f1.png", "b/depth/f1.png"),
                     ("c/x.jpg", "c/x_depth.npy")]:
        (tmp_path / img).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / dep).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / img), image)
        if dep.endswith(".npy"):
            np.save(tmp_path / dep, metres)
        else:
            cv2.imwrite(str(tmp_path / dep), mm)
    (tmp_path / "c" / "lonely.png").write_bytes(b"")  # no depth beside it: not a sample
    got = {s.key: s for s in NyuSource(DatasetSpec(type="nyu", path=str(tmp_path)))}
    assert sorted(got) == ["a/00001_colors", "b/rgb/f1", "c/x"]
    assert got["a/00001_colors"].disparity[0, 0] == pytest.approx(1 / 2.5)  # PNG: mm
    assert got["c/x"].disparity[0, 0] == pytest.approx(1 / 4.0)  # npy: metres


def test_type_lists_come_from_the_registry(monkeypatch, capsys):
    class Fake(Middlebury0103Source):
        kind = "fakeformat"
        help = "a layout only this test has"

    monkeypatch.setitem(SOURCES, "fakeformat", Fake)
    helps = {}
    for cmd in ("eval", "train"):
        with pytest.raises(SystemExit):
            filmmine_main([cmd, "--help"])
        helps[cmd] = " ".join(capsys.readouterr().out.split())
        assert all(kind in helps[cmd] for kind in SOURCES), cmd
    assert "fakeformat: a layout only this test has" in helps["eval"]
    # argparse accepts the registered type (the run then stops at the missing checkpoint)
    assert filmmine_main(["eval", "--checkpoint", "none.pt", "--dataset", ".", "--type",
                          "fakeformat"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert isinstance(build_source(DatasetSpec.parse("fakeformat:.")), Fake)


# ----------------------------------------------------------------------------- eval end to end

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("adaptck"))


@pytest.mark.parametrize("kind", [
    pytest.param("kitti", marks=needs(KITTI)),
    pytest.param("middlebury0103", marks=needs(MB0103)),
    pytest.param("eth3d", marks=needs(TEDDY_Q, ETH3D)),
    pytest.param("nyu", marks=needs(MOTO)),
])
def test_eval_end_to_end(kind, checkpoint, tmp_path, capsys):
    if kind == "kitti":
        data, n, label = kitti_tree(tmp_path / "k"), 1, "disparity"
        valid = [int((cv2.imread(str(KITTI / "disp_occ_0_000046_10.png"),
                                 cv2.IMREAD_UNCHANGED) > 0).sum())]
    elif kind == "middlebury0103":
        data, n, label = MB0103, 3, "disparity"
        valid = [int((cv2.imread(str(MB0103 / s / g), cv2.IMREAD_UNCHANGED) > 0).sum())
                 for s, g in [("teddy", "disp2.png"), ("tsukuba", "disp3.pgm"),
                              ("venus", "disp2.pgm")]]
    elif kind == "eth3d":
        data, n, label = eth3d_tree(tmp_path / "e"), 1, "disparity"
        valid = [int(np.isfinite(_pfm_direct(TEDDY_Q / "disp0GT.pfm")).sum())]
    else:
        data, depth_m = nyu_tree(tmp_path / "n")
        n, label, valid = 1, "depth", [int(np.isfinite(depth_m).sum())]
    out = tmp_path / "report.json"
    rc = filmmine_main(["eval", "--checkpoint", str(checkpoint), "--dataset", str(data),
                        "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads(out.read_text())
    assert (rep["type"], rep["images"], rep["skipped"], rep["label"]) == (kind, n, 0, label)
    assert rep["cap"] == (10.0 if kind == "nyu" else None)
    assert [r["valid_px"] for r in rep["per_image"]] == valid
    assert set(rep["metrics"]) == {"absrel", "delta_1.25_pct", "rmse"}
    assert all(np.isfinite(v) for v in rep["metrics"].values())
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"] == rep["metrics"]
