"""filmmine.stages.alignment: the vertical field of a pair, fitted on confident matches.

Truth: exact synthetic correspondences, and real rectified pairs (Middlebury 2001/2003, ETH3D)
whose right view is moved by a known offset, roll or vertical scale: the fit of the moved pair
minus the fit of the original recovers the move.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import SHARED

from filmmine.stages.alignment import (
    GRID,
    NO_FIT,
    confident_matches,
    fit_vertical,
    measure_vertical,
)
from filmmine.tools.bench_check_set import rotate, shift_down, vscale

TEDDY = SHARED / "middlebury2001_2003" / "teddy"
ETH3D = SHARED / "eth3d_twoview" / "delivery_area_1l"
needs_shared = pytest.mark.skipif(not TEDDY.is_dir(), reason=f"no shared data at {SHARED}")


def test_the_fit_recovers_an_exact_field() -> None:
    """Points whose vertical offsets follow offset + roll + scale + keystone exactly, with 20 %
    of them gross outliers: the coefficients come back, the outliers are not inliers."""
    rng = np.random.default_rng(0)
    w, h = 940, 540
    pl = np.stack([rng.uniform(0, w - 1, 400), rng.uniform(0, h - 1, 400)], 1)
    X, Y = pl[:, 0] - (w - 1) / 2, pl[:, 1] - (h - 1) / 2
    theta = np.radians(0.3)
    v = 0.7 + np.tan(theta) * X + 0.004 * Y + 0.01 * X * Y / w
    v[:80] += rng.uniform(5, 30, 80) * rng.choice([-1, 1], 80)
    pr = pl + np.stack([np.full(400, -12.0), v], 1)
    fit = fit_vertical(pl.astype(np.float32), pr.astype(np.float32), (w, h), 1.5)
    assert fit.offset_px == pytest.approx(0.7, abs=1e-3)
    assert fit.rotation_deg == pytest.approx(0.3, abs=1e-3)
    assert fit.scale_pct == pytest.approx(0.4, abs=1e-3)
    assert fit.matches == 400 and 315 <= fit.inliers <= 320
    assert fit.residual_px < 0.01
    assert fit.keystone_px == pytest.approx(0.01 * (w - 1) / 2 * (h - 1) / 2 / w, abs=1e-3)
    # the field over the frame: 0.7 px at the centre, more than 1.5 px towards the edges
    gx, gy = np.meshgrid(np.linspace(0, w - 1, GRID[0]), np.linspace(0, h - 1, GRID[1]))
    gx, gy = gx - (w - 1) / 2, gy - (h - 1) / 2
    field = np.abs(0.7 + np.tan(theta) * gx + 0.004 * gy + 0.01 * gx * gy / w)
    assert fit.field_exceed_fraction == pytest.approx(np.mean(field > 1.5), abs=0.01)
    assert fit.field_abs_p95_px == pytest.approx(np.percentile(field, 95), abs=0.01)


def test_too_few_matches_is_no_fit() -> None:
    pts = np.zeros((10, 2), np.float32)
    fit = fit_vertical(pts, pts, (100, 100), 1.5, min_matches=30)
    assert fit.matches == 10 and fit.inliers == 0 and np.isnan(fit.offset_px)
    flat = np.full((120, 160), 128, np.uint8)   # nothing to match on
    assert measure_vertical(flat, flat, None, 1.5).matches == 0
    assert NO_FIT.record()["vertical_matches"] == 0


def _grey(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


@needs_shared
@pytest.mark.parametrize(("move", "key", "want"), [
    (shift_down(2.0), "offset_px", 2.0), (shift_down(-1.0), "offset_px", -1.0),
    (rotate(0.5), "rotation_deg", -0.5), (rotate(-0.25), "rotation_deg", 0.25),
    (vscale(0.01), "scale_pct", 1.0)])
def test_a_known_move_of_a_real_right_view_is_recovered(move, key, want) -> None:
    """Teddy (Middlebury 2003, rectified) with its right view moved: the fitted parameter
    changes by the move within 0.05 px / 0.02 deg / 0.05 %; a shift leaves roll and scale
    put. (A roll of the right view about its centre also moves the offset measured at the
    left view's centre by roll x disparity.)"""
    left, right = _grey(TEDDY / "im2.png"), _grey(TEDDY / "im6.png")
    base = measure_vertical(left, right, None, 1.5)
    moved = measure_vertical(left, move(right), None, 1.5)
    assert base.matches > 100 and moved.inliers > 100
    tol = {"offset_px": 0.05, "rotation_deg": 0.02, "scale_pct": 0.05}
    assert getattr(moved, key) - getattr(base, key) == pytest.approx(want, abs=tol[key])
    if key == "offset_px":
        for k in ("rotation_deg", "scale_pct"):
            assert getattr(moved, k) == pytest.approx(getattr(base, k), abs=tol[k]), k


@needs_shared
def test_confident_matches_are_two_way_consistent_and_sub_pixel() -> None:
    """On a rectified ETH3D pair the matches' vertical offsets sit within a fraction of a
    pixel of each other (median |dy| < 0.3 px) and their horizontal ones are disparities
    (x_right <= x_left)."""
    left, right = _grey(ETH3D / "im0.png"), _grey(ETH3D / "im1.png")
    pl, pr = confident_matches(left, right)
    assert len(pl) > 100
    dy = pr[:, 1] - pl[:, 1]
    assert np.median(np.abs(dy - np.median(dy))) < 0.3
    assert np.median(pl[:, 0] - pr[:, 0]) > 0
