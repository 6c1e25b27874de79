"""filmmine.stages.disparity: labels against real stereo ground truth, and the frame verdicts.

Measured with the default recipe (DIS medium, full-resolution refinement, speckle filter),
2-core CPU (valid = % of all pixels):
* skimage Middlebury 2014 Motorcycle (perfect rectification): bad-2px 5.3 %, valid 84.8 %.
* MiddEval3 Motorcycle (imperfect rectification): bad-2px 6.4 %, valid 83.0 %,
  median vertical flow -0.32 px vs GT dy median -0.24 px.
* Middlebury 2003 Cones (quarter size): bad-2px 3.9 %, valid 82.8 %.
Every backend on these pairs: ``filmmine bench-disparity`` (docs/backends.md).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import SHARED

from filmmine.corpus.encode import confidence_to_uint8
from filmmine.flow import FlowBackend
from filmmine.recipe import load_recipe
from filmmine.run.unit import backend_for
from filmmine.stages.disparity import (
    DisparityResult,
    check_batch,
    check_flows,
    compute_disparity,
    rescale_flow,
    work_size,
)
from filmmine.tools.bench_data import read_pfm

IMPERFECT = SHARED / "middlebury2014_motorcycle_imperfect"
CONES = SHARED / "middlebury2003_cones"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared data at {SHARED}")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def recipe() -> dict:
    return load_recipe()


@pytest.fixture(scope="module")
def cfg(recipe: dict) -> dict:
    return recipe["disparity"]


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
    6.4 %, valid 83.0 %; the median vertical flow matches the vertical GT."""
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
    """Middlebury 2003 Cones, quarter size (GT 0 = unknown): measured bad-2px 3.9 %."""
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


def test_inconsistent_backward_flow_is_inconsistent(cfg: dict) -> None:
    """Flows that disagree everywhere: "inconsistent" (few of the matched pixels pass the LR
    check); under the paper's rules, "few_valid" (few of all pixels do)."""
    lr, _ = flows_for(ramp())
    rng = np.random.default_rng(0)
    rl = np.zeros_like(lr)
    rl[..., 0] = rng.uniform(-30, 30, (H, W)).astype(np.float32)
    res = check_flows(lr, rl, cfg, W)
    assert res.reason == "inconsistent"
    assert res.stats["lr_pass_fraction"] < 0.2
    assert res.stats["consistency_rate"] < 0.2 and res.stats["matchable_fraction"] > 0.8
    assert check_flows(lr, rl, load_recipe("paper")["disparity"], W).reason == "few_valid"


def test_unmatched_pixels_do_not_count_against_the_consistency_rate(cfg: dict) -> None:
    """A matcher that declines 45 % of the frame (NaN both ways: a wall SGBM will not match)
    and labels the rest consistently: accepted with its labels (consistency 1.0, matchable
    0.55); the paper's rule counts the unmatched pixels as failed and rejects it."""
    lr, rl = flows_for(ramp())
    lr[: int(H * 0.45), :, 0] = np.nan
    rl[: int(H * 0.45), :, 0] = np.nan
    res = check_flows(lr, rl, cfg, W)
    assert res.reason is None
    assert res.stats["consistency_rate"] == 1.0
    assert res.stats["matchable_fraction"] == pytest.approx(0.55, abs=0.05)
    assert np.isnan(res.disparity[: int(H * 0.45)]).all()
    assert check_flows(lr, rl, load_recipe("paper")["disparity"], W).reason == "few_valid"


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


# --------------------------------------------------------------------------------------------
# Resolution policy, confidence, occlusion, speckle and post-filter (any backend)


class FixedFlow(FlowBackend):
    """Returns constant flows whatever the images: u = -d left->right, +d right->left."""

    name = "fixed"

    def __init__(self, d: float) -> None:
        self.d = d
        self.sizes: list[tuple[int, int]] = []

    def flow(self, src, dst):
        out = []
        for i, a in enumerate(src):
            self.sizes.append((a.shape[1], a.shape[0]))
            sign = -1.0 if i < len(src) // 2 else 1.0
            f = np.zeros((*a.shape, 2), np.float32)
            f[..., 0] = sign * self.d
            out.append(f)
        return out


def test_work_size() -> None:
    assert work_size((960, 540), 0) == (960, 540)
    assert work_size((960, 540), 480) == (480, 270)
    assert work_size((960, 540), 2000) == (960, 540)      # never above the given size
    assert work_size((480, 540), 240) == (240, 270)       # a squeezed view keeps its aspect


def test_disparity_is_scaled_exactly_to_the_output_size(cfg: dict) -> None:
    """Flow at half width doubles when restored; a squeezed half-SBS view likewise."""
    img = np.zeros((60, 200), np.uint8)
    be = FixedFlow(3.0)
    # working resolution: computed at 100 px wide, stored at 200
    res = compute_disparity([img], [img], be, dict(cfg, work_width=100, speckle_max_px=0))[0]
    assert be.sizes[0] == (100, 30)
    d = res.disparity[np.isfinite(res.disparity)]
    assert d.size > 0 and np.all(d == 6.0)
    # a half-width (squeezed) view given as is, labels at full aspect: 2x disparity
    be = FixedFlow(2.5)
    res = compute_disparity([img[:, :100]], [img[:, :100]], be,
                            dict(cfg, speckle_max_px=0), out_size=(200, 60))[0]
    assert be.sizes[0] == (100, 60)                       # computed on the view as given
    assert res.disparity.shape == (60, 200)
    assert np.all(res.disparity[np.isfinite(res.disparity)] == 5.0)
    # and a half-height (top-bottom) view: vertical flow doubles, disparity does not change
    flow = torch.zeros((1, 2, 30, 100))
    flow[:, 0], flow[:, 1] = -2.0, 0.75
    out = rescale_flow(flow, (100, 60))
    assert torch.all(out[:, 0] == -2.0) and torch.all(out[:, 1] == 1.5)


def test_half_sbs_synthetic_pair_restored(cfg: dict) -> None:
    """A real matcher on a squeezed view: labels at full aspect match the full-aspect truth."""
    from filmmine.flow import get_backend
    from filmmine.tools.bench_data import synthetic_pairs

    p = synthetic_pairs(1, (320, 180), seed=4)[0]
    squeeze = [cv2.resize(v, (160, 180), interpolation=cv2.INTER_AREA) for v in (p.left, p.right)]
    be = get_backend("dis", preset="medium", finest_scale=0)
    full = compute_disparity([squeeze[0]], [squeeze[1]], be, cfg, out_size=(320, 180))[0]
    both = np.isfinite(full.disparity) & np.isfinite(p.gt)
    assert both.mean() > 0.6
    assert float(np.median(full.disparity[both] - p.gt[both])) == pytest.approx(0.0, abs=0.1)
    assert float(np.abs(full.disparity[both] - p.gt[both]).mean()) < 0.6


def test_confidence_and_occlusion(cfg: dict) -> None:
    """A foreground strip (d = 20) over background (d = 4): the background just left of it
    is hidden in the right view and flagged occluded; confidence is 0 exactly where invalid."""
    h, w = 40, 200
    d_left = np.full((h, w), 4.0, np.float32)
    d_left[:, 100:140] = 20.0
    # right view: background at x' = x - 4, foreground at x' = x - 20 (in front)
    d_right = np.full((h, w), 4.0, np.float32)
    d_right[:, 80:120] = 20.0
    z = np.zeros_like(d_left)
    # the left pixels 84..99 map into x' 80..95, where the right view sees the foreground
    res = check_flows(np.stack([-d_left, z], -1), np.stack([d_right, z], -1),
                      dict(cfg, speckle_max_px=0), w)
    assert res.occluded is not None and res.confidence is not None
    assert res.occluded[:, 86:98].all() and not res.occluded[:, 20:60].any()
    assert np.isnan(res.disparity[:, 86:98]).all()
    valid = np.isfinite(res.disparity)
    assert np.all(res.confidence[~valid] == 0) and np.all(res.confidence[valid] > 0.3)
    assert res.stats["occluded_fraction"] > 0
    png = confidence_to_uint8(res.confidence)
    assert png.dtype == np.uint8 and png.max() == 255 and png[~valid].max() == 0
    # a backend's own match confidence multiplies in
    half = check_flows(np.stack([-d_left, z], -1), np.stack([d_right, z], -1),
                       dict(cfg, speckle_max_px=0), w, match_confidence=np.full((h, w), 0.5,
                                                                               np.float32))
    assert np.allclose(half.confidence, res.confidence * 0.5)


def test_speckle_filter_drops_small_islands(cfg: dict) -> None:
    lr, rl = flows_for(np.full(H, 5.0))
    # an island of 6 x 6 = 36 px with a disparity far from its surroundings (consistent too)
    lr[50:56, 150:156, 0] = -30.0
    rl[50:56, 120:126, 0] = 30.0
    keep = check_flows(lr, rl, dict(cfg, speckle_max_px=0), W)
    assert np.isfinite(keep.disparity[50:56, 150:156]).all()
    res = check_flows(lr, rl, dict(cfg, speckle_max_px=100), W)
    assert np.isnan(res.disparity[50:56, 150:156]).all()
    assert np.isfinite(res.disparity[:, 40:140]).mean() > 0.95
    assert res.stats["speckle_fraction"] == pytest.approx(36 / (H * W), abs=1e-3)


def test_post_filter_never_fills_invalid_pixels(cfg: dict) -> None:
    rng = np.random.default_rng(1)
    d = np.repeat(np.linspace(2.0, 20.0, H)[:, None], W, 1).astype(np.float32)
    noisy = d + rng.normal(0, 0.3, d.shape).astype(np.float32)
    lr = np.stack([-noisy, np.zeros_like(d)], -1)
    rl = np.stack([noisy, np.zeros_like(d)], -1)    # consistent enough (|error| < 1 mostly)
    guide = np.full((H, W), 128, np.uint8)
    base = dict(cfg, speckle_max_px=0)
    raw = check_flows(lr, rl, base, W, guide=guide)
    smooth = check_flows(lr, rl, dict(base, post_filter="guided"), W, guide=guide)
    assert np.array_equal(np.isfinite(raw.disparity), np.isfinite(smooth.disparity))
    both = np.isfinite(raw.disparity)
    assert np.abs(smooth.disparity - d)[both].mean() < np.abs(raw.disparity - d)[both].mean()
    with pytest.raises(ValueError, match="post_filter"):
        check_flows(lr, rl, dict(base, post_filter="median"), W)


def test_batch_checks_match_single_checks(cfg: dict) -> None:
    lr1, rl1 = flows_for(ramp())
    lr2, rl2 = flows_for(ramp()[::-1].copy(), dy=3.0)
    t = lambda *a: torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2)  # noqa: E731
    batch = check_batch(t(lr1, lr2), t(rl1, rl2), cfg, W)
    for res, (lr, rl) in zip(batch, [(lr1, rl1), (lr2, rl2)], strict=True):
        one = check_flows(lr, rl, cfg, W)
        assert res.reason == one.reason
        assert np.array_equal(res.disparity, one.disparity, equal_nan=True)


def test_device_and_cpu_checks_agree(cfg: dict) -> None:
    """The torch implementation (used on CUDA) and the numpy one (CPU) give the same masks."""
    from filmmine.stages.disparity import _core_numpy, _core_torch

    rng = np.random.default_rng(3)
    d = cv2.GaussianBlur(rng.uniform(-10, 25, (H, W)).astype(np.float32), (0, 0), 4)
    noise = rng.normal(0, 0.6, (H, W)).astype(np.float32)
    v = cv2.GaussianBlur(rng.uniform(-3, 3, (H, W)).astype(np.float32), (0, 0), 8)
    lr = np.stack([-d, v])                                   # [2, H, W]: planes u, v
    rl = np.stack([d + noise, -v])
    a = _core_numpy(lr, rl, cfg["lr_max_px"], cfg["vertical_max_px"])
    t = lambda x: torch.from_numpy(x)[None]  # noqa: E731
    b = {k: x[0] for k, x in _core_torch(t(lr), t(rl), cfg["lr_max_px"],
                                         cfg["vertical_max_px"]).items()}
    for key in ("valid", "lr_ok", "occluded"):
        # OpenCV's remap interpolates in 1/32 px steps: a few pixels at the threshold differ
        assert (a[key] == b[key]).mean() >= 0.995, key
    assert float(a["vert_fail"]) == pytest.approx(float(b["vert_fail"]))
    assert (np.abs(a["conf"] - b["conf"]) <= 0.03).mean() >= 0.995


@pytest.mark.parametrize("case", ["normal", "ties", "sorted", "half_constant", "small"])
def test_percentiles_are_numpys(case: str) -> None:
    """The windowed selection gives np.percentile's values (linear interpolation)."""
    from filmmine.stages.disparity import percentiles

    rng = np.random.default_rng(7)
    x = rng.normal(0, 10, 9_000 if case == "small" else 450_000).astype(np.float32)
    if case == "ties":
        x = np.round(x * 16) / 16
    elif case == "sorted":
        x = np.sort(x)
    elif case == "half_constant":
        x[: x.size // 2] = 3.0
    qs = [0.0, 1.0, 37.3, 50.0, 99.0, 99.99, 100.0]
    assert percentiles(x, qs) == pytest.approx(np.percentile(x, qs), rel=1e-6, abs=1e-6)
