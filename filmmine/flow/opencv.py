"""The OpenCV backends (CPU): DIS optical flow, StereoSGBM, and SGBM over each frame's own
range with vertical flow from a coarse DIS (``dis_sgbm``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, ClassVar

import cv2
import numpy as np

from .base import FlowBackend, StereoFlows, pixel_grid

log = logging.getLogger(__name__)


class DisFlow(FlowBackend):
    """OpenCV DIS (Kroeger et al. 2016): fast CPU flow, coarse-to-fine with variational refine."""

    name = "dis"
    PRESETS: ClassVar[dict[str, int]] = {
        "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
        "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
        "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
    }

    def __init__(self, preset: str = "medium", device: str = "cpu", finest_scale: int = -1,
                 patch_size: int = 0, patch_stride: int = 0, gd_iterations: int = -1,
                 vr_iterations: int = -1, **_other: Any) -> None:
        if preset not in self.PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose from {sorted(self.PRESETS)}")
        if device != "cpu":
            raise ValueError("the dis backend runs on the CPU only (on a GPU: --recipe gpu, "
                             "or [disparity] backend = census_sgm or raft)")
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(self.PRESETS[preset])
        if finest_scale >= 0:
            # the presets stop at half resolution (scale 1); 0 refines at full resolution:
            # fewer bad labels, for several times the time
            self._dis.setFinestScale(finest_scale)
        # 0 / -1 keep the preset's value
        if patch_size > 0:
            self._dis.setPatchSize(patch_size)
        if patch_stride > 0:
            self._dis.setPatchStride(patch_stride)
        if gd_iterations >= 0:
            self._dis.setGradientDescentIterations(gd_iterations)
        if vr_iterations >= 0:
            self._dis.setVariationalRefinementIterations(vr_iterations)

    def flow(self, src: Sequence[np.ndarray], dst: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self._dis.calc(a, b, None) for a, b in zip(src, dst, strict=True)]


class SgbmFlow(FlowBackend):
    """OpenCV StereoSGBM (Hirschmüller 2008) as a flow backend, for rectified pairs only.

    ``src`` is taken as the left view when ``dst`` lies to its left (u < 0) — i.e. the search
    runs over ``u`` in ``[-max_disp, max_disp]`` by matching both orderings — so it answers
    ``flow(left, right)`` and ``flow(right, left)`` alike: u = -d and u = +d, v = 0,
    unmatched pixels NaN.
    """

    name = "sgbm"
    MODES: ClassVar[dict[str, int]] = {
        "sgbm": cv2.STEREO_SGBM_MODE_SGBM,         # 5 paths
        "hh": cv2.STEREO_SGBM_MODE_HH,             # 8 paths, full-size buffers
        "3way": cv2.STEREO_SGBM_MODE_SGBM_3WAY,
    }

    COSTS = ("grey", "rank", "auto")
    # auto: rank when the views' mean grey levels differ by more than this share, or their
    # spreads by more than twice it (another exposure or lighting in one view)
    AUTO_TOLERANCE = 0.05

    def __init__(self, device: str = "cpu", max_disparity_frac: float = 0.15,
                 sgbm_block_size: int = 5, sgbm_mode: str = "sgbm", sgbm_uniqueness: int = 10,
                 sgbm_speckle_window: int = 100, sgbm_speckle_range_px: int = 2,
                 sgbm_cost: str = "grey", sgbm_rank_radius: int = 3,
                 **_other: Any) -> None:
        if device != "cpu":
            raise ValueError(f"the {self.name} backend runs on the CPU only (on a GPU: "
                             "--recipe gpu, or [disparity] backend = census_sgm or raft)")
        if sgbm_mode not in self.MODES:
            raise ValueError(f"unknown SGBM mode {sgbm_mode!r}; choose from {sorted(self.MODES)}")
        if sgbm_block_size < 1 or sgbm_block_size % 2 == 0:
            raise ValueError(f"sgbm_block_size must be odd and >= 1, got {sgbm_block_size}")
        if not 0 < max_disparity_frac <= 1:
            raise ValueError(f"max_disparity_frac must be in (0, 1], got {max_disparity_frac}")
        if sgbm_cost not in self.COSTS:
            raise ValueError(f"unknown sgbm_cost {sgbm_cost!r}; choose from {self.COSTS}")
        if not 1 <= sgbm_rank_radius <= 7:
            raise ValueError(f"sgbm_rank_radius must be 1-7 px, got {sgbm_rank_radius}")
        self.cost, self.rank_radius = sgbm_cost, int(sgbm_rank_radius)
        self.max_disparity_frac = max_disparity_frac
        self.params = dict(blockSize=sgbm_block_size, P1=8 * sgbm_block_size ** 2,
                           P2=32 * sgbm_block_size ** 2, disp12MaxDiff=-1,
                           uniquenessRatio=sgbm_uniqueness, speckleWindowSize=sgbm_speckle_window,
                           speckleRange=sgbm_speckle_range_px, mode=self.MODES[sgbm_mode])
        self._sgbm = cv2.StereoSGBM_create(**self.params)

    def matched_views(self, left: np.ndarray, right: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """What SGBM matches: the grey views, or their rank transforms (``sgbm_cost``; auto:
        where the views' exposure differs, ``photometry_differs``)."""
        if self.cost == "rank" or (self.cost == "auto" and photometry_differs(left, right)):
            return rank_transform(left, self.rank_radius), rank_transform(right, self.rank_radius)
        return left, right

    def disparity(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """[H, W] float32 px of the left view, ``d = x_left - x_right``; NaN = unmatched.
        Films have both signs of disparity: the search is [-R, R), R a multiple of 16."""
        r = max(16, int(np.ceil(self.max_disparity_frac * left.shape[1] / 16)) * 16)
        return self.disparity_range(*self.matched_views(left, right), -r, r)

    def disparity_range(self, left: np.ndarray, right: np.ndarray, lo: int,
                        hi: int) -> np.ndarray:
        """``disparity`` searching [lo, hi) (hi - lo a multiple of 16). SGBM leaves the first
        ``hi`` and the last ``-lo`` columns unmatched: they are padded away (what the padding
        matches is out of the other view and fails the left-right check later)."""
        m = self._sgbm
        m.setMinDisparity(lo)
        m.setNumDisparities(hi - lo)
        pl, pr = max(hi, 0), max(-lo, 0)
        pad = [cv2.copyMakeBorder(v, 0, 0, pl, pr, cv2.BORDER_REPLICATE) for v in (left, right)]
        raw = m.compute(*pad)[:, pl:pl + left.shape[1]]   # int16, 1/16 px
        d = raw.astype(np.float32)
        d *= np.float32(1 / 16)                            # exact: a power of two
        d[raw < lo * 16] = np.nan                          # minDisparity - 1 marks no match
        return d

    def flow(self, src: Sequence[np.ndarray], dst: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Treats every (src, dst) as (left, right); see ``stereo`` for the reverse direction."""
        out = []
        for a, b in zip(src, dst, strict=True):
            d = self.disparity(a, b)
            out.append(np.stack([-d, np.zeros_like(d)], axis=-1))
        return out

    def both_ways(self, left: np.ndarray, right: np.ndarray, lo: int, hi: int
                  ) -> tuple[np.ndarray, np.ndarray]:
        """(the left view's disparity, the right view's) over [lo, hi), on what ``sgbm_cost``
        says to match. auto: the grey views; where their photometry differs, also their rank
        transforms, and the pair with more left-right consistent pixels (neither wins on every
        such pair)."""
        def run(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            d_l = self.disparity_range(a, b, lo, hi)
            # the right view's disparity: mirror both views, the right one becomes the left
            # (a rank transform's window is symmetric: the mirror of the transform)
            d_r = self.disparity_range(np.ascontiguousarray(b[:, ::-1]),
                                       np.ascontiguousarray(a[:, ::-1]), lo, hi)[:, ::-1]
            return d_l, d_r

        def ranked() -> tuple[np.ndarray, np.ndarray]:
            return run(rank_transform(left, self.rank_radius),
                       rank_transform(right, self.rank_radius))

        if self.cost == "rank":
            return ranked()
        grey = run(left, right)
        if self.cost == "grey" or not photometry_differs(left, right):
            return grey
        rank = ranked()   # the transforms only here: they cost time on every pair
        return rank if consistent_pixels(*rank) > consistent_pixels(*grey) else grey

    def stereo(self, left: Sequence[np.ndarray], right: Sequence[np.ndarray]) -> StereoFlows:
        lr, rl = [], []
        for a, b in zip(left, right, strict=True):
            r = max(16, int(np.ceil(self.max_disparity_frac * a.shape[1] / 16)) * 16)
            d_l, d_r = self.both_ways(a, b, -r, r)
            lr.append(np.stack([-d_l, np.zeros_like(d_l)]))
            rl.append(np.stack([d_r, np.zeros_like(d_r)]))
        return StereoFlows(np.stack(lr), np.stack(rl))


class DisSgbmFlow(SgbmFlow):
    """SGBM over a per-frame disparity range, with vertical flow, both from a coarse DIS pass.

    Films have small depth budgets: searching ``±max_disparity_frac`` of the width for every
    pixel wastes most of SGBM's time (its cost grows with the number of disparities). A DIS
    flow on the views downscaled (cheap) gives each frame's range
    (percentiles ``range_percentiles`` of its horizontal flow, widened by ``margin_px`` px and
    ``margin_frac`` of the span, capped at ``±max_disparity_frac``) and a smooth vertical flow
    ``v`` of both directions, so the vertical checks work, unlike plain ``sgbm`` (v = 0).
    The coarse pass is an integer downscale leaving at least ``coarse_width`` px (960 -> 240;
    a 320 px view is not downscaled: on views much narrower DIS sees vertical motion that is
    not there).
    Horizontal disparity comes from SGBM over that range, in both directions (mirrored views).
    """

    name = "dis_sgbm"

    V_MODELS = ("quadratic", "none")

    def __init__(self, device: str = "cpu", max_disparity_frac: float = 0.15,
                 sgbm_mode: str = "3way", coarse_width: int = 240, margin_px: float = 8.0,
                 margin_frac: float = 0.25,
                 range_percentiles: tuple[float, float] = (0.5, 99.5), v_median: int = 5,
                 v_model: str = "quadratic", v_sigma_px: float = 24.0,
                 v_deadband_px: float = 0.75, v_local: bool = False,
                 v_warp_px: float = 0.0, coarse_preset: str = "medium",
                 **options: Any) -> None:
        super().__init__(device=device, max_disparity_frac=max_disparity_frac,
                         sgbm_mode=sgbm_mode, **options)
        if coarse_width < 16:
            raise ValueError(f"dis_sgbm_coarse_width must be >= 16 px, got {coarse_width}")
        if margin_px < 0 or margin_frac < 0:
            raise ValueError("dis_sgbm margins must be >= 0")
        if v_median not in (0, 1, 3, 5):
            raise ValueError(f"dis_sgbm_v_median must be 0, 1, 3 or 5, got {v_median}")
        if v_model not in self.V_MODELS:
            raise ValueError(f"unknown dis_sgbm_v_model {v_model!r}; choose from {self.V_MODELS}")
        if v_sigma_px <= 0 or v_deadband_px < 0:
            raise ValueError("dis_sgbm_v_sigma_px must be > 0 and dis_sgbm_v_deadband_px >= 0")
        if v_warp_px < 0:
            raise ValueError(f"dis_sgbm_v_warp_px must be >= 0, got {v_warp_px}")
        if coarse_preset not in DisFlow.PRESETS:
            raise ValueError(f"unknown dis_sgbm_coarse_preset {coarse_preset!r}; choose from "
                             f"{sorted(DisFlow.PRESETS)}")
        self.coarse_width, self.v_median = coarse_width, v_median
        self.v_model, self.v_sigma_px, self.v_deadband_px = v_model, v_sigma_px, v_deadband_px
        self.v_local, self.v_warp_px = bool(v_local), float(v_warp_px)
        self.margin_px, self.margin_frac = float(margin_px), float(margin_frac)
        self.percentiles = (float(range_percentiles[0]), float(range_percentiles[1]))
        self._coarse = cv2.DISOpticalFlow_create(DisFlow.PRESETS[coarse_preset])
        self._coarse.setFinestScale(0)

    def coarse_factor(self, width: int) -> int:
        """The integer downscale of the coarse pass: at least ``coarse_width`` px wide."""
        return max(1, width // self.coarse_width)

    def search_range(self, u_coarse: np.ndarray, width: int) -> tuple[int, int]:
        """[lo, hi) integer disparity range at full scale from a coarse left->right flow."""
        s = width / u_coarse.shape[1]
        cap = max(16, int(np.ceil(self.max_disparity_frac * width)))
        d = -u_coarse[np.isfinite(u_coarse)] * s
        if d.size == 0:
            return -cap, cap
        p_lo, p_hi = np.percentile(d, self.percentiles)
        margin = self.margin_px + s + self.margin_frac * float(p_hi - p_lo)
        lo = max(-cap, int(np.floor(p_lo - margin)))
        hi = min(cap, int(np.ceil(p_hi + margin)))
        n = max(16, int(np.ceil((hi - lo) / 16)) * 16)   # SGBM: a multiple of 16
        return lo, lo + n

    def stereo(self, left: Sequence[np.ndarray], right: Sequence[np.ndarray]) -> StereoFlows:
        if len(left) != len(right):
            raise ValueError(f"{len(left)} left views but {len(right)} right views")
        h, w = left[0].shape[:2]
        lr = np.empty((len(left), 2, h, w), np.float32)   # filled in place: no stacking copies
        rl = np.empty_like(lr)
        for i, (a, b) in enumerate(zip(left, right, strict=True)):
            if a.shape[:2] != (h, w) or b.shape[:2] != (h, w):
                raise ValueError("the pairs of one call must have one size")
            s = self.coarse_factor(w)
            cs = (max(8, round(w / s)), max(8, round(h / s)))
            ac = cv2.resize(a, cs, interpolation=cv2.INTER_AREA)
            bc = cv2.resize(b, cs, interpolation=cv2.INTER_AREA)
            f_lr = self._coarse.calc(ac, bc, None)
            lo, hi = self.search_range(f_lr[..., 0], w)
            rows = self.right_rows(ac, bc, f_lr, (w, h)) if self.v_warp_px > 0 else None
            if rows is None:
                d_left, rl[i, 0] = self.both_ways(a, b, lo, hi)   # (the coarse pass: grey views)
            else:
                d_left, rl[i, 0] = self._both_ways_on_rows(a, b, rows, lo, hi)
            np.negative(d_left, out=lr[i, 0])
            if self.v_model == "quadratic":
                lr[i, 1], rl[i, 1] = self._vertical_model(f_lr, d_left, rl[i, 0], (w, h))
            else:
                f_rl = self._coarse.calc(bc, ac, None)
                lr[i, 1] = self._vertical(f_lr, f_rl, (w, h), cs[1])
                rl[i, 1] = self._vertical(f_rl, f_lr, (w, h), cs[1])
        return StereoFlows(lr, rl)

    def right_rows(self, ac: np.ndarray, bc: np.ndarray, f_lr: np.ndarray,
                   size: tuple[int, int]) -> np.ndarray | None:
        """The right view's vertical flow at full size, ``v_rl`` (y_left - y_right), when the
        rig's misalignment reaches ``v_warp_px`` (95th percentile of |v_rl|), else None.

        SGBM searches along rows only: a fraction of a pixel of vertical disparity already
        costs it labels, though the frame checks accept it. The rig model (robust quadratic)
        is fitted to a coarse right->left DIS pass where it agrees with ``f_lr`` both ways,
        before any SGBM, so that SGBM runs once, on the right view moved onto the left's rows
        (``_both_ways_on_rows``)."""
        f_rl = self._coarse.calc(bc, ac, None)
        ok = _round_trip(f_rl, f_lr)
        if ok.mean() < 0.05:
            ok = np.isfinite(f_rl[..., 1])
        v = rig_model(np.ascontiguousarray(f_rl[..., 1]), ok)
        scale = np.float32(size[1] / f_rl.shape[0])        # coarse px -> output px
        if float(np.percentile(np.abs(v), 95)) * scale < self.v_warp_px:
            return None
        v_rl = cv2.resize(v, size, interpolation=cv2.INTER_LINEAR)
        v_rl *= scale
        return v_rl

    def _both_ways_on_rows(self, left: np.ndarray, right: np.ndarray, v_rl: np.ndarray,
                           lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """``both_ways`` with the right view moved by ``v_rl`` onto the left's rows; the right
        view's disparity is put back on its own rows (nearest: NaN stays NaN)."""
        h, w = left.shape[:2]
        xs, ys = pixel_grid(h, w)
        on_left_rows = cv2.remap(right, xs, ys - v_rl, cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REPLICATE)
        d_left, d_moved = self.both_ways(left, on_left_rows, lo, hi)
        d_right = cv2.remap(d_moved, xs, ys + v_rl, cv2.INTER_NEAREST,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=float("nan"))
        return d_left, d_right

    def _vertical_model(self, f: np.ndarray, d_left: np.ndarray, d_right: np.ndarray,
                        size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Vertical flow of both directions at full size from the coarse left->right flow
        ``f`` (``v_model = "quadratic"``).

        A stereo pair's vertical disparity comes from the rig's misalignment (offset,
        rotation, keystone, scale), smooth over the frame: the coarse v gets a robust
        quadratic fit in x and y; with ``v_local``, plus what stays of its residual smoothed
        over ``v_sigma_px`` beyond a dead band of ``v_deadband_px`` (``_smooth_vertical``).
        The residual is off by default: where the views' lighting differs, DIS's v follows
        the light, not the rig, and local v then fails good labels. It is fitted where the
        coarse match is trustworthy: its u agrees within 1 coarse px with SGBM's disparity
        ``d_left`` (elsewhere, in occlusions and where content leaves the frame, DIS returns
        arbitrary v); with fewer than 5 % such pixels, on all of them (the fit is robust).
        The right view's v is the left's at the matching pixel, negated:
        ``v_rl(x) = -v_lr(x + d_right(x))``, looked up on the coarse grid (v is smooth, and a
        full-size lookup costs more). One coarse DIS pass instead of the two that the
        consistency test of ``v_model = "none"`` needs, and a smaller vertical error."""
        w, h = size
        ch, cw = f.shape[:2]
        sx, sy = w / cw, h / ch                          # coarse px -> output px
        small = cv2.resize(d_left, (cw, ch), interpolation=cv2.INTER_NEAREST) / sx
        with np.errstate(invalid="ignore"):
            ok = np.abs(f[..., 0] + small) <= 1.0        # NaN (unmatched) compares False
        if ok.mean() < 0.05:
            ok = np.isfinite(f[..., 1])
        v = np.ascontiguousarray(f[..., 1])
        v = _smooth_vertical(v, ok, self.v_sigma_px / sy, self.v_deadband_px / sy) \
            if self.v_local else rig_model(v, ok)
        v_lr = cv2.resize(v, size, interpolation=cv2.INTER_LINEAR)
        v_lr *= np.float32(sy)                           # in place: no full-size copy
        xs = np.broadcast_to(np.arange(cw, dtype=np.float32), (ch, cw))
        ys = np.ascontiguousarray(np.broadcast_to(np.arange(ch, dtype=np.float32)[:, None],
                                                  (ch, cw)))
        map_x = cv2.resize(d_right, (cw, ch), interpolation=cv2.INTER_NEAREST) / np.float32(sx)
        map_x += xs
        np.copyto(map_x, xs, where=np.isnan(map_x))     # unmatched: the pixel itself
        v_rl = cv2.remap(v, map_x, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        v_rl = cv2.resize(v_rl, size, interpolation=cv2.INTER_LINEAR)
        v_rl *= np.float32(-sy)
        return v_lr, v_rl

    def _vertical(self, f: np.ndarray, back: np.ndarray, size: tuple[int, int],
                  coarse_h: int) -> np.ndarray:
        """The coarse vertical flow ``f[..., 1]`` at full size (px scaled by h / coarse h).

        v is only measured where the coarse match is consistent (the flow ``back`` found at
        the match points back within 1 coarse px, both components); elsewhere (occlusions,
        content leaving the frame) DIS returns arbitrary v, which the scale would multiply into
        failed vertical checks of the pixels around it (``v_model = "none"``: per-pixel v,
        filled from its consistent neighbours (normalised Gaussian, else their median) where
        inconsistent; then a median filter; see ``_vertical_model`` for the default)."""
        ok = _round_trip(f, back)
        v = np.ascontiguousarray(f[..., 1], np.float32)
        scale = size[1] / coarse_h                     # coarse px -> output px
        if not ok.all():
            fill = float(np.median(v[ok])) if ok.any() else 0.0
            wgt = cv2.GaussianBlur(ok.astype(np.float32), (0, 0), 3.0)
            num = cv2.GaussianBlur(np.where(ok, v, 0.0).astype(np.float32), (0, 0), 3.0)
            smooth = np.where(wgt > 0.05, num / np.maximum(wgt, 1e-6), fill)
            v = np.where(ok, v, smooth).astype(np.float32)
        if self.v_median > 1:
            v = cv2.medianBlur(v, self.v_median)
        return cv2.resize(v, size, interpolation=cv2.INTER_LINEAR) * scale


def _round_trip(f: np.ndarray, back: np.ndarray, tol: float = 1.0) -> np.ndarray:
    """[h, w] bool: where the flow ``back``, found at the end of ``f``, leads back to the pixel
    within ``tol`` px in both components (a consistent coarse match)."""
    xs, ys = pixel_grid(*f.shape[:2])
    b = cv2.remap(back, xs + f[..., 0], ys + f[..., 1], cv2.INTER_LINEAR,
                  borderMode=cv2.BORDER_CONSTANT, borderValue=(1e6, 1e6))
    return (np.abs(f[..., 0] + b[..., 0]) <= tol) & (np.abs(f[..., 1] + b[..., 1]) <= tol)


def photometry_differs(left: np.ndarray, right: np.ndarray,
                       tolerance: float = SgbmFlow.AUTO_TOLERANCE) -> bool:
    """Whether two grey views of one scene were taken at another exposure or under another
    light: their mean grey levels differ by more than ``tolerance`` of the left's, or their
    standard deviations by more than twice that share."""
    ml, sl = cv2.meanStdDev(left)
    mr, sr = cv2.meanStdDev(right)
    ml, sl, mr, sr = float(ml[0, 0]), float(sl[0, 0]), float(mr[0, 0]), float(sr[0, 0])
    return abs(ml - mr) > tolerance * max(ml, 1.0) or \
        abs(sr / max(sl, 1e-3) - 1.0) > 2 * tolerance


def consistent_pixels(d_left: np.ndarray, d_right: np.ndarray, tol_px: float = 1.0) -> int:
    """Left-view pixels whose match in the right view has the same disparity within
    ``tol_px`` (``d_right`` indexed by the right view's x: x_left = x_right + d_right)."""
    w = d_left.shape[1]
    xr = np.arange(w, dtype=np.float32)[None, :] - d_left
    ok = np.isfinite(xr)
    xi = np.clip(np.rint(np.where(ok, xr, 0.0)), 0, w - 1).astype(np.intp)
    back = np.take_along_axis(d_right, xi, axis=1)
    with np.errstate(invalid="ignore"):
        ok &= (xr >= -0.5) & (xr <= w - 0.5) & (np.abs(back - d_left) <= tol_px)
    return int(np.count_nonzero(ok))


def rank_transform(grey: np.ndarray, radius: int = 3) -> np.ndarray:
    """Each pixel's rank in its (2 radius + 1)^2 window: how many neighbours are darker,
    scaled to 0-255 (uint8). It keeps only the order of grey levels, which a gain, an offset
    or a gamma between the views does not change (Zabih & Woodfill's rank transform): SGBM
    on it matches views at different exposures that it fails to match on the grey levels.
    OpenCV compare and masked add, fast on one core."""
    h, w = grey.shape[:2]
    r = int(radius)
    pad = cv2.copyMakeBorder(grey, r, r, r, r, cv2.BORDER_REPLICATE)
    acc = np.zeros((h, w), np.uint8)
    darker = np.empty((h, w), np.uint8)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy or dx:
                cv2.compare(pad[r + dy:r + dy + h, r + dx:r + dx + w], grey, cv2.CMP_LT,
                            dst=darker)
                cv2.add(acc, 1, dst=acc, mask=darker)
    n = (2 * r + 1) ** 2 - 1
    return cv2.LUT(acc, _rank_lut(n))


@lru_cache(maxsize=8)
def _rank_lut(n: int) -> np.ndarray:
    lut = np.round(np.minimum(np.arange(256), n) * (255.0 / n)).astype(np.uint8)
    lut.flags.writeable = False
    return lut


def _quadratic_terms(x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    return [np.ones_like(x), x, y, x * x, x * y, y * y]


def rig_model(v: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """[h, w] float32: a robust quadratic fit in x and y of the vertical flow ``v`` over the
    ``ok`` pixels (coordinates normalised to [-0.5, 0.5]). Cheap at any size: the fit uses at
    most ~4000 of the pixels (a regular subgrid)."""
    h, w = v.shape
    step = max(1, int(np.sqrt(ok.sum() / 4000.0)))
    sub = ok[::step, ::step]
    ys, xs = np.nonzero(sub)
    x = (xs * step).astype(np.float64) / w - 0.5
    y = (ys * step).astype(np.float64) / h - 0.5
    a = np.stack(_quadratic_terms(x, y), 1)
    t = v[::step, ::step][sub].astype(np.float64)
    wgt = np.ones_like(t)
    coef = np.zeros(a.shape[1])
    ridge = 1e-9 * np.eye(a.shape[1])
    for _ in range(5):  # IRLS with Cauchy weights at twice the residuals' robust spread
        # normal equations by einsum: a BLAS call here wakes OpenBLAS's threads, which then
        # spin against OpenCV's
        aw = a * (wgt * wgt)[:, None]
        coef = np.linalg.solve(np.einsum("ni,nj->ij", aw, a) + ridge, np.einsum("ni,n->i", aw, t))
        r = t - np.einsum("ni,i->n", a, coef)
        s = 1.4826 * float(np.median(np.abs(r))) + 1e-3
        wgt = 1.0 / (1.0 + (r / (2.0 * s)) ** 2)
    gx = (np.arange(w, dtype=np.float64) / w - 0.5)[None, :]
    gy = (np.arange(h, dtype=np.float64) / h - 0.5)[:, None]
    model = sum(c * term for c, term in zip(coef, _quadratic_terms(gx, gy), strict=True))
    return np.broadcast_to(model, (h, w)).astype(np.float32)


def _smooth_vertical(v: np.ndarray, ok: np.ndarray, sigma: float,
                     deadband: float) -> np.ndarray:
    """[h, w] vertical flow: ``rig_model`` of ``v`` plus the ``ok`` pixels' residual,
    Gaussian-smoothed (``sigma`` px, normalised over ``ok``) and shrunk by ``deadband`` px
    towards 0 (the smoothing runs on a grid downscaled to ~sigma / 2 px cells: the result is
    low-frequency)."""
    h, w = v.shape
    model = rig_model(v, ok)
    okf = ok.astype(np.float32)
    resid = (v - model) * okf
    k = max(1, int(sigma / 2))                  # cell size of the smoothing grid
    small = (max(1, round(w / k)), max(1, round(h / k)))
    sig = sigma * small[0] / w
    num = cv2.GaussianBlur(cv2.resize(resid, small, interpolation=cv2.INTER_AREA), (0, 0), sig)
    den = cv2.GaussianBlur(cv2.resize(okf, small, interpolation=cv2.INTER_AREA), (0, 0), sig)
    local = np.where(den > 0.05, num / np.maximum(den, 1e-3), 0.0).astype(np.float32)
    local = np.sign(local) * np.maximum(np.abs(local) - deadband, 0.0)
    return model + cv2.resize(local, (w, h), interpolation=cv2.INTER_LINEAR)
