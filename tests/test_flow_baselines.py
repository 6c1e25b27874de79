"""filmmine.flow.opencv baselines (``dis``, ``sgbm``) behind the interface, and the registry.

Measured with the default recipe on the inputs below (CPU):
* dis: synthetic frames EPE 0.05-0.26 px, 87-91 % valid; motorcycle half size bad-2px 6.4 %,
  density 87.6 %.
* sgbm (3way, block 3, uniqueness 20): synthetic frames EPE 0.15-0.16 px, 93-94 % valid;
  motorcycle half size bad-2px 4.4 %, density 88.7 %.
* dis_sgbm (quadratic vertical model): synthetic frames EPE 0.15-0.16 px, 93-94 % valid;
  motorcycle half size bad-2px 4.6 %, density 88.8 %.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import SHARED

from filmmine.flow import backend_options, get_backend
from filmmine.flow.opencv import DisSgbmFlow, SgbmFlow
from filmmine.recipe import load_recipe
from filmmine.stages.disparity import compute_disparity
from filmmine.tools.bench_data import synthetic_pairs
from filmmine.tools.bench_disparity import evaluate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cfg() -> dict:
    return load_recipe()["disparity"]


@pytest.mark.parametrize("name", ["dis", "sgbm", "dis_sgbm"])
def test_cpu_only_backends_refuse_cuda(name: str) -> None:
    with pytest.raises(ValueError, match="CPU only"):
        get_backend(name, device="cuda")


@pytest.mark.parametrize(("name", "max_epe", "min_valid"), [("dis", 0.35, 0.84),
                                                            ("sgbm", 0.3, 0.91),
                                                            ("dis_sgbm", 0.3, 0.90)])
def test_synthetic_accuracy(name: str, max_epe: float, min_valid: float, cfg) -> None:
    be = get_backend(name, **backend_options(cfg))
    frames = synthetic_pairs(4, seed=2)
    results = compute_disparity([f.left for f in frames], [f.right for f in frames], be, cfg)
    for f, res in zip(frames, results, strict=True):
        m = evaluate(res.disparity, f.gt)
        assert m["epe"] <= max_epe, m
        assert np.isfinite(res.disparity).mean() >= min_valid, m


@pytest.mark.parametrize(("name", "max_bad2", "min_density"), [("dis", 7.5, 84.0),
                                                               ("sgbm", 7.0, 87.0),
                                                               ("dis_sgbm", 7.0, 87.0)])
def test_motorcycle_half_size(name: str, max_bad2: float, min_density: float, moto_half,
                              cfg) -> None:
    left, right, gt = moto_half
    res = compute_disparity([left], [right], get_backend(name, **backend_options(cfg)), cfg)[0]
    m = evaluate(res.disparity, gt)
    assert m["bad2"] <= max_bad2, m
    assert m["density"] >= min_density, m


def test_sgbm_conventions(moto_half) -> None:
    """left->right u = -d, right->left u = +d (mirrored views), v = 0, unmatched NaN."""
    left, right, gt = moto_half
    be = SgbmFlow()
    f = be.stereo([left], [right])
    u_lr, u_rl = f.lr[0, 0], f.rl[0, 0]
    assert (f.lr[0, 1] == 0).all() and (f.rl[0, 1] == 0).all()
    assert np.nanmedian(-u_lr - gt) == pytest.approx(0.0, abs=0.3)
    assert np.nanmedian(u_rl) > 3                       # the right view's d is positive too
    assert np.isnan(u_lr).any()                         # some pixels stay unmatched
    (g,) = be.flow([left], [right])
    assert np.array_equal(g[..., 0], u_lr, equal_nan=True)
    with pytest.raises(ValueError, match="sgbm_block_size"):
        SgbmFlow(sgbm_block_size=4)


def test_dis_sgbm_range_covers_the_truth_and_is_narrower_than_the_full_search(cfg) -> None:
    be = get_backend("dis_sgbm", **backend_options(cfg))
    for f in synthetic_pairs(4, seed=5):
        small = cv2.resize(f.left, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
        small_r = cv2.resize(f.right, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
        coarse = be._coarse.calc(small, small_r, None)
        lo, hi = be.search_range(coarse[..., 0], f.left.shape[1])
        gt = f.gt[np.isfinite(f.gt)]
        assert lo <= gt.min() and gt.max() < hi, (lo, hi, gt.min(), gt.max())
        assert (hi - lo) % 16 == 0
        assert hi - lo < 2 * cfg["max_disparity_frac"] * f.left.shape[1]


def test_dis_sgbm_measures_vertical_misalignment(moto_half, cfg) -> None:
    """A right view 3 px lower: v = +3 left->right, -3 right->left, and the frame is rejected
    as vertically misaligned. Plain sgbm (v = 0) cannot see it in its flow: the paper's rules
    accept the frame; the default's verdict, fitted on confident matches whatever the
    backend, rejects it and measures the 3 px."""
    left, right, _gt = moto_half
    shifted = np.roll(right, 3, axis=0)
    be = DisSgbmFlow(**backend_options(cfg))
    f = be.stereo([left, left], [right, shifted])
    v_lr, v_rl = f.lr[:, 1], f.rl[:, 1]
    assert abs(np.median(v_lr[0])) < 0.3 and abs(np.median(v_rl[0])) < 0.3
    assert np.median(v_lr[1]) == pytest.approx(3.0, abs=0.3)
    assert np.median(v_rl[1]) == pytest.approx(-3.0, abs=0.3)
    ok, bad = compute_disparity([left, left], [right, shifted], be, cfg)
    assert ok.reason is None and bad.reason == "vertical_misaligned"
    sgbm = SgbmFlow(**backend_options(cfg))
    paper = {**cfg, "verdict": "paper"}
    assert compute_disparity([left], [shifted], sgbm, paper)[0].reason != "vertical_misaligned"
    plain = compute_disparity([left], [shifted], sgbm, cfg)[0]
    assert plain.reason == "vertical_misaligned"
    assert plain.stats["vertical_offset_px"] == pytest.approx(3.0, abs=0.2)


def test_smooth_vertical_fits_the_rig_and_keeps_a_real_local_deviation() -> None:
    """A quadratic vertical field (offset, rotation, keystone) with 30 % of the consistent
    pixels wild: the robust fit recovers it to a few hundredths of a pixel; a +2 px patch
    (something local, larger than the dead band) survives, shrunk by the dead band."""
    from filmmine.flow.opencv import _smooth_vertical

    h, w = 120, 200
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    xn, yn = x / w - 0.5, y / h - 0.5
    truth = (0.4 + 1.5 * xn - 0.8 * yn + 2.0 * xn * yn + 0.6 * xn * xn).astype(np.float32)
    v = truth + rng.normal(0, 0.1, (h, w)).astype(np.float32)
    wild = rng.random((h, w)) < 0.3
    v[wild] = rng.uniform(-8, 8, wild.sum()).astype(np.float32)
    ok = rng.random((h, w)) > 0.2
    out = _smooth_vertical(v, ok, sigma=6.0, deadband=0.25)
    assert float(np.abs(out - truth).mean()) < 0.05
    bump = v.copy()
    bump[40:80, 60:120] += 2.0
    out = _smooth_vertical(bump, ok, sigma=6.0, deadband=0.25)
    inner = out[50:70, 75:105] - truth[50:70, 75:105]
    assert float(np.median(inner)) == pytest.approx(1.75, abs=0.25)
    assert float(np.abs(out - truth)[:, :40].mean()) < 0.1      # far from the patch: the rig


def test_dis_sgbm_vertical_flow_against_vertical_ground_truth(cfg) -> None:
    """MiddEval3's imperfectly rectified Motorcycle has per-pixel vertical truth: measured
    vertical EPE 0.105 px with the quadratic model, 0.256 px with per-pixel coarse v."""
    from filmmine.tools.bench_data import default_data_dir, load_middlebury

    folder = default_data_dir() / "middlebury2014_motorcycle_imperfect"
    if not (folder / "disp0GTy.pfm").is_file():
        pytest.skip("../shared/data not available")
    p = load_middlebury(folder)
    epe = {}
    for model in ("quadratic", "none"):
        c = dict(cfg, dis_sgbm_v_model=model)
        res = compute_disparity([p.left], [p.right], get_backend("dis_sgbm", **backend_options(c)),
                                c)[0]
        epe[model] = evaluate(res.disparity, p.gt, res.vertical, p.gt_dy)["vepe"]
    assert epe["quadratic"] < 0.15 and epe["quadratic"] < 0.5 * epe["none"], epe
    with pytest.raises(ValueError, match="dis_sgbm_v_model"):
        DisSgbmFlow(v_model="cubic")


def test_dis_sgbm_vertical_flow_follows_the_rig_not_the_light(cfg) -> None:
    """MiddEval3's PianoL: the right view lit by another lamp. DIS on the grey views sees the
    lit patches move vertically; the rig model alone keeps the rectified pair's |v| within
    1 px (measured p99 0.98 px, density 45 %), where the model plus its local residual put
    |v| past 13 px in places and failed a fifth of the frame's labels (density 37.5 %).
    (Measured with the right view matched where it stands: ``dis_sgbm_v_warp_px = 0``.)"""
    from filmmine.tools.bench_data import default_data_dir, load_middlebury

    folder = default_data_dir() / "middeval3_trainingQ" / "PianoL"
    if not (folder / "disp0GT.pfm").is_file():
        pytest.skip("../shared/data not available")
    p = load_middlebury(folder)
    out = {}
    for local in (False, True):
        c = dict(cfg, dis_sgbm_v_local=local, dis_sgbm_v_warp_px=0.0)   # v alone
        res = compute_disparity([p.left], [p.right], get_backend("dis_sgbm", **backend_options(c)),
                                c)[0]
        out[local] = (float(np.percentile(np.abs(res.vertical), 99)),
                      evaluate(res.disparity, p.gt)["density"])
    assert not cfg["dis_sgbm_v_local"]
    assert out[False][0] < 1.25 and out[False][1] > 42.0, out
    assert out[True][0] > 5.0 and out[True][1] < out[False][1] - 4.0, out


def test_dis_sgbm_matches_a_slightly_misaligned_pair_on_the_left_rows(cfg) -> None:
    """Middlebury 2003's Cones with the right view moved 1 px down (and, apart, rolled
    0.25 deg), a misalignment the frame checks accept: SGBM searches along rows, so matched
    as it stands the pair lost labels (measured bad-2 2.97 % at 79.8 % density, rolled
    2.38 % / 82.8 %); matched with the right view moved onto the left's rows by the fitted
    rig, it labels as the rectified pair does (1.81 % / 84.1 %): 1.76 % / 83.8 %, rolled
    1.94 % / 83.6 %. A rectified pair is not moved: its labels are the same bytes."""
    from filmmine.tools.bench_data import default_data_dir, load_middlebury2003

    folder = default_data_dir() / "middlebury2003_cones"
    if not folder.is_dir():
        pytest.skip("../shared/data not available")
    p = load_middlebury2003(folder)
    h, w = p.right.shape
    assert cfg["dis_sgbm_v_warp_px"] > 0
    for shift, roll in ((1.0, 0.0), (0.0, 0.25)):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), roll, 1.0)
        m[1, 2] += shift
        right = cv2.warpAffine(p.right, m, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
        got = {}
        for px in (cfg["dis_sgbm_v_warp_px"], 0.0):
            c = dict(cfg, dis_sgbm_v_warp_px=px)
            res = compute_disparity([p.left], [right], get_backend("dis_sgbm",
                                                                   **backend_options(c)), c)[0]
            assert res.reason is None
            got[px] = evaluate(res.disparity, p.gt)
        warped, plain = got[cfg["dis_sgbm_v_warp_px"]], got[0.0]
        assert warped["bad2"] <= 2.1 and warped["density"] >= 83.0, (shift, roll, got)
        assert plain["bad2"] > warped["bad2"] + 0.3, (shift, roll, got)
    for q in synthetic_pairs(2, (320, 180)):
        same = [compute_disparity([q.left], [q.right], get_backend(
            "dis_sgbm", **backend_options(dict(cfg, dis_sgbm_v_warp_px=px))), cfg)[0].disparity
            for px in (cfg["dis_sgbm_v_warp_px"], 0.0)]
        assert np.array_equal(*same, equal_nan=True)
    with pytest.raises(ValueError, match="dis_sgbm_v_warp_px"):
        DisSgbmFlow(v_warp_px=-1.0)


def test_dis_sgbm_vertical_flow_of_a_rotated_and_shifted_rig(cfg) -> None:
    """The right camera rolled by 0.3 deg (vertical disparity up to 1.7 px, varying across
    the frame) or 1 deg, or shifted 12 px down: the per-pixel vertical flow matches the
    truth (mean error over every pixel with ground truth measured 0.026 px at 0.3 deg, 0.27 px
    at 1 deg; the shift exactly), and the 1 deg and 12 px rigs are rejected as vertically
    misaligned."""
    be = get_backend("dis_sgbm", **backend_options(cfg))
    p = synthetic_pairs(1, (640, 360), seed=12)[0]
    ys, xs = np.mgrid[0:360, 0:640].astype(np.float32)
    for angle, max_err, reason in ((0.3, 0.06, None), (1.0, 0.4, "vertical_misaligned")):
        m = cv2.getRotationMatrix2D((320, 180), angle, 1.0)
        right = cv2.warpAffine(p.right, m, (640, 360), borderMode=cv2.BORDER_REFLECT)
        res = compute_disparity([p.left], [right], be, cfg)[0]
        # the left pixel (x, y) shows the scene point at (x - d, y) of the unrotated right
        # view, which the roll moves to row m[1] . (x - d, y, 1)
        x_r = xs - np.nan_to_num(p.gt)
        truth = m[1, 0] * x_r + m[1, 1] * ys + m[1, 2] - ys
        ok = np.isfinite(p.gt)                   # v is estimated at every pixel
        err = float(np.abs(res.vertical - truth)[ok].mean())
        assert err < max_err, (angle, err)
        assert res.reason == reason, (angle, res.reason)
    shifted = cv2.warpAffine(p.right, np.float32([[1, 0, 0], [0, 1, 12]]), (640, 360),
                             borderMode=cv2.BORDER_REFLECT)
    res = compute_disparity([p.left], [shifted], be, cfg)[0]
    assert res.reason == "vertical_misaligned"
    assert float(np.median(res.vertical)) == pytest.approx(12.0, abs=0.3)


def test_dis_sgbm_right_view_vertical_is_the_left_ones_at_the_match(moto_half, cfg) -> None:
    """A rotated rig (v varies across the frame): the right view's v at x - d is minus the
    left view's v at x, for the pixels matched both ways."""
    left, right, _gt = moto_half
    h, w = right.shape
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), 0.4, 1.0)
    right = cv2.warpAffine(right, rot, (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
    f = DisSgbmFlow(**backend_options(cfg)).stereo([left], [right])
    u, v_lr, d_r, v_rl = f.lr[0, 0], f.lr[0, 1], f.rl[0, 0], f.rl[0, 1]
    assert np.ptp(np.percentile(v_lr, [5, 95])) > 1.0          # the rotation is measured
    ys, xs = np.nonzero(np.isfinite(u))
    xr = np.rint(xs + u[ys, xs]).astype(int)                     # the match in the right view
    inside = (xr >= 0) & (xr < w)
    ys, xs, xr = ys[inside], xs[inside], xr[inside]
    both = np.abs(d_r[ys, xr] + u[ys, xs]) <= 1.0                # consistent both ways
    err = np.abs(v_rl[ys, xr] + v_lr[ys, xs])[both]
    assert both.sum() > 0.5 * u.size and np.percentile(err, 95) < 0.1


# --------------------------------------------------------------------------------------------
# What SGBM matches: grey levels, rank transforms, or the better of both (sgbm_cost)


def test_the_rank_transform_ignores_gain_offset_and_gamma() -> None:
    """A pixel's rank in its window: the same image under another gain, offset or gamma
    (any increasing map of its grey levels) gives the same ranks; a known 3x3 case exactly."""
    from filmmine.flow.opencv import rank_transform

    img = np.random.default_rng(0).integers(20, 160, (60, 80)).astype(np.uint8)
    x = np.arange(256) / 255.0
    lut = np.clip(np.rint(255.0 * x ** 0.7 * 1.3 + 12), 0, 255).astype(np.uint8)
    assert np.all(np.diff(lut[20:160].astype(int)) > 0)   # increasing over the image's levels
    brighter = lut[img]
    assert np.array_equal(rank_transform(img), rank_transform(brighter))
    patch = np.array([[9, 1, 2], [3, 5, 7], [4, 6, 8]], np.uint8)
    # the centre (5) has 4 darker neighbours of 8: 4 * 255 / 8
    assert rank_transform(patch, 1)[1, 1] == round(4 * 255 / 8)


def test_consistent_pixels_counts_matches_that_map_back() -> None:
    from filmmine.flow.opencv import consistent_pixels

    d = np.full((4, 20), 3.0, np.float32)
    assert consistent_pixels(d, d.copy()) == 4 * 17      # x - 3 < 0 leaves the view
    wrong = d.copy()
    wrong[:, 5:] = 9.0
    assert consistent_pixels(d, wrong) == 4 * 5          # x_right 0..4 keep d = 3
    assert consistent_pixels(np.full_like(d, np.nan), d) == 0


@pytest.mark.skipif(not (SHARED / "middeval3_trainingQ" / "MotorcycleE").is_dir(),
                    reason="needs the shared MiddEval3 scenes")
def test_auto_cost_keeps_a_right_view_at_another_exposure(cfg) -> None:
    """MiddEval3's MotorcycleE (right view at another exposure; the left view and ground
    truth of Motorcycle): on grey levels SGBM labels a third of the frame; sgbm_cost auto
    sees the photometry differ, matches rank transforms too and keeps them (about 80 % at
    bad-2 near Motorcycle's own). A pair at one exposure is matched as on grey levels."""
    from filmmine.tools.bench_data import load_middlebury

    e = load_middlebury(SHARED / "middeval3_trainingQ" / "MotorcycleE")
    got = {}
    for cost in ("grey", "auto"):
        c = dict(cfg, sgbm_cost=cost)
        be = DisSgbmFlow(**backend_options(c))
        got[cost] = evaluate(compute_disparity([e.left], [e.right], be, c)[0].disparity, e.gt)
    assert got["grey"]["density"] < 40 and got["auto"]["density"] > 70, got
    assert got["auto"]["bad2"] < 4.0, got
    m = load_middlebury(SHARED / "middlebury2014_motorcycle_imperfect")
    flows = {cost: DisSgbmFlow(**backend_options(dict(cfg, sgbm_cost=cost))).stereo(
        [m.left], [m.right]) for cost in ("grey", "auto")}
    assert np.array_equal(flows["grey"].lr, flows["auto"].lr, equal_nan=True)
