"""filmmine.disparity: labels against real stereo ground truth, and the frame verdicts.

Measured with the default recipe (DIS medium, full-resolution refinement), 2-core CPU:
* skimage Middlebury 2014 Motorcycle (perfect rectification): bad-2px 6.7 %, valid 87.4 %.
* MiddEval3 Motorcycle (imperfect rectification): bad-2px 8.1 %, valid 86.0 %,
  median vertical flow -0.32 px vs GT dy median -0.24 px.
* Middlebury 2003 Cones (quarter size): bad-2px 5.3 %, valid 85.7 %.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED

from filmmine.disparity import DisparityResult, check_flows, compute_disparity
from filmmine.pipeline import backend_for
from filmmine.recipe import load_recipe

IMPERFECT = SHARED / "middlebury2014_motorcycle_imperfect"
CONES = SHARED / "middlebury2003_cones"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared data at {SHARED}")


@pytest.fixture(scope="module")
def recipe() -> dict:
    return load_recipe()


@pytest.fixture(scope="module")
def cfg(recipe: dict) -> dict:
    return recipe["disparity"]


def read_pfm(path: Path) -> np.ndarray:
    """Middlebury PFM (one channel), flipped to top row first."""
    with path.open("rb") as f:
        assert f.readline().strip() == b"Pf"
        w, h = map(int, f.readline().split())
        scale = float(f.readline())
        data = np.fromfile(f, "<f4" if scale < 0 else ">f4", count=w * h)
    return np.flipud(data.reshape(h, w)).copy()


def run(left: np.ndarray, right: np.ndarray, recipe: dict) -> DisparityResult:
    backend = backend_for(recipe, "cpu")
    return compute_disparity([left], [right], backend, recipe["disparity"])[0]


def bad_and_valid(res: DisparityResult, gt: np.ndarray, px: float = 2.0) -> tuple[float, float]:
    d = res.disparity
    both = np.isfinite(d) & np.isfinite(gt)
    assert both.sum() > 10_000
    return float((np.abs(d - gt)[both] > px).mean()), float(np.isfinite(d).mean())


def grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


# --------------------------------------------------------------------------------------------
# Real pairs with ground truth


@pytest.fixture(scope="module")
def motorcycle() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = pytest.importorskip("skimage.data")
    left, right, gt = data.stereo_motorcycle()
    return grey(left), grey(right), gt


def test_motorcycle_bad2_and_valid(motorcycle, recipe: dict) -> None:
    """Middlebury 2014 Motorcycle: bad-2px <= 10 % of valid pixels, >= 50 % valid, accepted."""
    left, right, gt = motorcycle
    gt = np.where(np.isfinite(gt), gt, np.nan)  # +inf = unknown
    res = run(left, right, recipe)
    bad, valid = bad_and_valid(res, gt)
    assert bad <= 0.10, bad
    assert valid >= 0.50, valid
    assert res.reason is None
    assert res.stats["valid_fraction"] == pytest.approx(valid)


def test_motorcycle_sign_convention(motorcycle, recipe: dict) -> None:
    """d = x_left - x_right: positive like the GT (7..60 px); swapping the views flips it."""
    left, right, gt_full = motorcycle
    gt = gt_full[np.isfinite(gt_full)]
    assert gt.min() >= 7 and gt.max() <= 61
    res = run(left, right, recipe)
    both = np.isfinite(res.disparity) & np.isfinite(gt_full)
    # no bias: the median error is 0.05 px (a sign or convention error would be ~80 px)
    assert abs(float(np.median((res.disparity - gt_full)[both]))) < 0.3
    d = res.disparity[np.isfinite(res.disparity)]
    assert np.percentile(d, 5) > 0
    assert res.stats["disp_p50_px"] == pytest.approx(float(np.median(d)))
    swapped = run(right, left, recipe).disparity
    assert np.nanmedian(swapped) < -7


@needs_shared
def test_motorcycle_imperfect_rectification(recipe: dict) -> None:
    """MiddEval3 Motorcycle with its small vertical error (GT dy ~ -0.24 px): measured bad-2px
    8.1 %, valid 86.0 %; the median vertical flow matches the vertical GT."""
    left = cv2.imread(str(IMPERFECT / "im0.png"), cv2.IMREAD_GRAYSCALE)
    right = cv2.imread(str(IMPERFECT / "im1.png"), cv2.IMREAD_GRAYSCALE)
    gt = read_pfm(IMPERFECT / "disp0GT.pfm")
    gt_dy = read_pfm(IMPERFECT / "disp0GTy.pfm")
    assert gt.shape == left.shape == (497, 741)
    gt = np.where(np.isfinite(gt), gt, np.nan)
    res = run(left, right, recipe)
    bad, valid = bad_and_valid(res, gt)
    assert bad <= 0.11, bad
    assert valid >= 0.75, valid
    assert res.reason is None
    dy = float(np.median(gt_dy[np.isfinite(gt_dy)]))
    assert res.stats["vertical_median_px"] == pytest.approx(dy, abs=0.2)


@needs_shared
def test_cones_2003(recipe: dict) -> None:
    """Middlebury 2003 Cones, quarter size (GT 0 = unknown): measured bad-2px 5.3 %."""
    tifffile = pytest.importorskip("tifffile")
    left = cv2.imread(str(CONES / "left.png"), cv2.IMREAD_GRAYSCALE)
    right = cv2.imread(str(CONES / "right.png"), cv2.IMREAD_GRAYSCALE)
    gt = tifffile.imread(CONES / "disp_left.tif").astype(np.float32)
    gt = np.where(gt > 0, gt, np.nan)
    res = run(left, right, recipe)
    bad, valid = bad_and_valid(res, gt)
    assert bad <= 0.08, bad
    assert valid >= 0.75, valid


# --------------------------------------------------------------------------------------------
# check_flows on constructed flows (H x W = 120 x 320, stored width 320 -> min range 1.7 px)

H, W = 120, 320


def flows_for(disp_rows: np.ndarray, dy: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Exactly consistent flows for a disparity that depends on the row only."""
    d = np.repeat(disp_rows.astype(np.float32)[:, None], W, axis=1)
    lr = np.stack([-d, np.full_like(d, dy)], axis=-1)
    rl = np.stack([d, np.full_like(d, -dy)], axis=-1)
    return lr, rl


def ramp() -> np.ndarray:
    return np.linspace(2.0, 20.0, H)


def test_consistent_flows_accepted_with_d_equal_minus_u(cfg: dict) -> None:
    lr, rl = flows_for(ramp())
    res = check_flows(lr, rl, cfg, W)
    assert res.reason is None
    d = res.disparity
    valid = np.isfinite(d)
    assert np.array_equal(d[valid], -lr[..., 0][valid])
    # invalid only where the match leaves the right view (x_right = x - d < 0); the last row
    # is left out here (see test_match_on_the_last_row_or_column_is_valid)
    xs = np.arange(W)[None, :]
    inside = xs - np.ceil(ramp())[:, None] >= 0
    assert valid[:-1][inside[:-1]].all()
    assert not valid[xs - ramp()[:, None] < -1].any()
    assert res.stats["valid_fraction"] == pytest.approx(valid.mean())
    assert res.stats["valid_fraction"] > 0.9
    assert res.stats["disp_p50_px"] == pytest.approx(11.0, abs=0.5)
    assert res.stats["range_px"] == pytest.approx(18.0 * 0.98, abs=0.5)


def test_vertical_offset_is_misaligned(cfg: dict) -> None:
    lr, rl = flows_for(ramp(), dy=4.0)
    res = check_flows(lr, rl, cfg, W)
    assert res.reason == "vertical_misaligned"
    assert res.stats["vertical_fail_fraction"] == 1.0
    assert res.stats["vertical_median_px"] == pytest.approx(4.0)
    assert np.isnan(res.disparity).all()


def test_small_vertical_offset_passes(cfg: dict) -> None:
    lr, rl = flows_for(ramp(), dy=1.0)
    res = check_flows(lr, rl, cfg, W)
    assert res.reason is None
    assert res.stats["vertical_fail_fraction"] == 0.0


def test_inconsistent_backward_flow_is_few_valid(cfg: dict) -> None:
    lr, _ = flows_for(ramp())
    rng = np.random.default_rng(0)
    rl = np.zeros_like(lr)
    rl[..., 0] = rng.uniform(-30, 30, (H, W)).astype(np.float32)
    res = check_flows(lr, rl, cfg, W)
    assert res.reason == "few_valid"
    assert res.stats["lr_pass_fraction"] < 0.2


def test_constant_small_disparity_is_flat(cfg: dict) -> None:
    lr, rl = flows_for(np.full(H, 3.0))
    res = check_flows(lr, rl, cfg, W)
    assert res.reason == "flat"
    assert res.stats["range_px"] == pytest.approx(0.0, abs=1e-4)
    # the same range at a small stored width is enough (thresholds scale with the width)
    lr, rl = flows_for(np.linspace(3.0, 4.0, H))
    assert check_flows(lr, rl, cfg, W).reason == "flat"
    assert check_flows(lr, rl, cfg, 100).reason is None


def test_match_on_the_last_row_or_column_is_valid(cfg: dict) -> None:
    """Zero flow both ways is perfectly consistent: every pixel passes the LR check."""
    zero = np.zeros((50, 80, 2), np.float32)
    res = check_flows(zero, zero, cfg, 80)
    assert res.stats["lr_pass_fraction"] == 1.0
