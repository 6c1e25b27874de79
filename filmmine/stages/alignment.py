"""Vertical alignment of a stereo pair from confident correspondences: the frame-level evidence
behind the ``vertical_misaligned`` verdict.

A rig's vertical misalignment (an offset, a roll, a vertical scale or keystone between the
views) is a smooth field over the frame. It is measured where matching is reliable, never from
every pixel's vertical flow: on textureless walls, sky and occlusions a dense matcher's v is
noise, and a plain wall does not make a frame misaligned.

* ``confident_matches``: corners of the left view (Shi-Tomasi, spread over the frame), tracked into
  the right view by pyramidal Lucas-Kanade from the dense disparity as first guess, kept when
  tracking back lands within ``fb_max_px`` of where it started (sub-pixel, textured, two-way
  consistent);
* ``fit_vertical``: a robust fit (iteratively reweighted least squares, Cauchy weights) of
  ``v = a + b X + c Y + k X Y / w`` over them (X, Y from the frame's centre), and how much of
  the frame the fitted field puts beyond a vertical limit.

Pure functions of uint8 grey views and numpy arrays (OpenCV on the CPU, on every device: the
views are on the host anyway).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

MAX_CORNERS = 300        # corners tracked per frame: the fit's 4 parameters need far fewer
LK_WINDOW = 11           # px, Lucas-Kanade window (at ALIGN_WIDTH)
LK_LEVELS = 3            # pyramid levels: catches ~80 px of first-guess error (misalignment)
GRID = (48, 27)          # where the fitted field is evaluated over the frame (columns, rows)


@dataclass(frozen=True)
class VerticalFit:
    """The fitted vertical field of one frame; NaN fields when too few matches were found."""

    matches: int              # two-way consistent correspondences
    inliers: int              # of them, within ``inlier_px`` of the fitted field
    offset_px: float          # v at the frame's centre, px (y_right - y_left)
    rotation_deg: float       # roll of the right view against the left (dv/dx)
    scale_pct: float          # vertical scale difference (dv/dy), percent
    keystone_px: float        # the X Y term's v at the frame's corners, px
    residual_px: float        # robust spread of the inliers' residuals, px
    field_exceed_fraction: float  # share of the frame where |fitted v| > the limit
    field_abs_p95_px: float   # 95th percentile of |fitted v| over the frame, px

    def record(self) -> dict[str, float]:
        """The evidence as flat, rounded ``vertical_*`` columns (frames.parquet, sample JSON)."""
        out = {}
        for k, v in asdict(self).items():
            key = k if k.startswith("vertical_") else f"vertical_{k}"
            out[key] = v if isinstance(v, int) else _round(v, 4)
        return out


def _round(x: float, nd: int) -> float:
    return round(float(x), nd) if math.isfinite(x) else float("nan")


CELLS = (24, 14)   # the frame's grid: a corner from each cell (a roll needs the edges)
QUALITY = 0.01     # a cell's corner counts when its score is this share of the frame's best


def spread_corners(grey: np.ndarray, n: int = MAX_CORNERS) -> np.ndarray:
    """Corners [N, 2] float32, the strongest of each cell of a 24 x 14 grid (Shi-Tomasi
    score, ``cv2.cornerMinEigenVal``), those of textureless cells left out; at most ``n``.
    (One corner a cell, not FAST's: picking among all FAST corners in Python is slow.)"""
    score = cv2.cornerMinEigenVal(grey, 5)
    h, w = score.shape
    ch, cw = h // CELLS[1], w // CELLS[0]
    if ch < 3 or cw < 3:
        return np.zeros((0, 2), np.float32)
    blocks = score[: ch * CELLS[1], : cw * CELLS[0]].reshape(CELLS[1], ch, CELLS[0], cw)
    blocks = blocks.transpose(0, 2, 1, 3).reshape(-1, ch * cw)
    best = np.argmax(blocks, axis=1)
    top = blocks[np.arange(len(blocks)), best]
    keep = np.nonzero(top > QUALITY * max(float(top.max()), 1e-12))[0]
    keep = keep[np.argsort(-top[keep], kind="stable")][:n]
    cy, cx = np.divmod(keep, CELLS[0])
    by, bx = np.divmod(best[keep], cw)
    return np.stack([cx * cw + bx, cy * ch + by], 1).astype(np.float32)


LCN_BOX = 31   # px, the neighbourhood of the local normalisation (at ALIGN_WIDTH)


def local_contrast(grey: np.ndarray, box: int = LCN_BOX) -> np.ndarray:
    """``grey`` less its local mean over its local spread (``box`` px square), as uint8
    around 128: what a gain, an offset or smooth lighting change between the views leaves.
    (Box sums: a Gaussian of the same reach is slower.)"""
    f = grey.astype(np.float32)
    mean = cv2.boxFilter(f, -1, (box, box), borderType=cv2.BORDER_REFLECT)
    var = cv2.boxFilter(f * f, -1, (box, box), borderType=cv2.BORDER_REFLECT) - mean * mean
    z = (f - mean) / np.sqrt(np.maximum(var, 0.0) + 25.0)
    return np.clip(z * 40.0 + 128.0, 0, 255).astype(np.uint8)


def confident_matches(left: np.ndarray, right: np.ndarray, u: np.ndarray | None = None,
                      fb_max_px: float = 0.5,
                      max_corners: int = MAX_CORNERS) -> tuple[np.ndarray, np.ndarray]:
    """(left points, right points) [N, 2] float32 of two-way consistent correspondences.

    ``u``: the dense left-to-right horizontal flow (px, NaN unknown), the first guess for each
    corner (the frame's median where unknown); without it, 0."""
    p0 = spread_corners(left, max_corners)
    # tracked on locally normalised views: a right view at another exposure or under other
    # lighting gives few matches on the grey levels
    left, right = local_contrast(left), local_contrast(right)
    if len(p0) < 4:
        empty = np.zeros((0, 2), np.float32)
        return empty, empty
    guess = p0.copy()
    if u is not None:
        xi = np.clip(np.round(p0[:, 0]).astype(int), 0, u.shape[1] - 1)
        yi = np.clip(np.round(p0[:, 1]).astype(int), 0, u.shape[0] - 1)
        du = u[yi, xi].astype(np.float32)
        known = np.isfinite(du)
        fill = float(np.median(du[known])) if known.any() else 0.0
        guess[:, 0] += np.where(known, du, np.float32(fill))
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 0.01)
    lk = dict(winSize=(LK_WINDOW, LK_WINDOW), maxLevel=LK_LEVELS, criteria=crit,
              flags=cv2.OPTFLOW_USE_INITIAL_FLOW)
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(left, right, p0, guess.copy(), **lk)
    back, st2, _ = cv2.calcOpticalFlowPyrLK(right, left, p1, p0.copy(), **lk)
    h, w = left.shape[:2]
    ok = (st1.ravel() == 1) & (st2.ravel() == 1)
    ok &= np.linalg.norm(back - p0, axis=1) < fb_max_px
    ok &= (p1[:, 0] >= 0) & (p1[:, 0] <= w - 1) & (p1[:, 1] >= 0) & (p1[:, 1] <= h - 1)
    return p0[ok], p1[ok]


def _design(x: np.ndarray, y: np.ndarray, w: int, h: int) -> np.ndarray:
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    X, Y = x - cx, y - cy
    return np.stack([np.ones_like(X), X, Y, X * Y / w], axis=-1)


NO_FIT = VerticalFit(0, 0, *([float("nan")] * 7))


def fit_vertical(pts_l: np.ndarray, pts_r: np.ndarray, size: tuple[int, int],
                 limit_px: float, min_matches: int = 30,
                 inlier_px: float = 1.0) -> VerticalFit:
    """The robust fit of the matches' vertical offsets, and the share of a ``size`` (w, h)
    frame where the fitted field exceeds ``limit_px``. Fewer than ``min_matches``: NO_FIT with
    the count."""
    n = len(pts_l)
    if n < max(4, min_matches):
        return VerticalFit(n, 0, *([float("nan")] * 7))
    w, h = size
    x = pts_l[:, 0].astype(np.float64)
    y = pts_l[:, 1].astype(np.float64)
    v = (pts_r[:, 1] - pts_l[:, 1]).astype(np.float64)
    a = _design(x, y, w, h)
    wgt = np.ones(n)
    coef = np.zeros(4)
    coef[0] = float(np.median(v))
    r = v - coef[0]
    for _ in range(8):  # IRLS, Cauchy weights at twice the residuals' robust spread
        s = 1.4826 * float(np.median(np.abs(r))) + 0.02
        wgt = 1.0 / (1.0 + (r / (2.0 * s)) ** 2)
        aw = a * wgt[:, None]
        coef = np.linalg.solve(aw.T @ a + 1e-9 * np.eye(4), aw.T @ v)
        r = v - a @ coef
    inl = np.abs(r) <= inlier_px
    spread = 1.4826 * float(np.median(np.abs(r[inl]))) if inl.any() else float("nan")
    gx, gy = np.meshgrid(np.linspace(0, w - 1, GRID[0]), np.linspace(0, h - 1, GRID[1]))
    field = np.abs(_design(gx.ravel(), gy.ravel(), w, h) @ coef)
    corner = abs(coef[3]) * ((w - 1) / 2.0) * ((h - 1) / 2.0) / w
    return VerticalFit(n, int(inl.sum()), float(coef[0]), math.degrees(math.atan(coef[1])),
                       float(coef[2] * 100.0), float(corner), spread,
                       float(np.mean(field > limit_px)), float(np.percentile(field, 95)))


ALIGN_WIDTH = 480   # px: matches are found on the views downscaled by an integer factor to
                    # about this width (940 px: 2x): less work, and the fit hardly changes


def measure_vertical(left: np.ndarray, right: np.ndarray, u: np.ndarray | None,
                     limit_px: float, min_matches: int = 30) -> VerticalFit:
    """``fit_vertical`` of ``confident_matches`` for one pair of grey views (same size),
    found at about ``ALIGN_WIDTH`` px and given in the views' pixels."""
    h, w = left.shape[:2]
    s = max(1, round(w / ALIGN_WIDTH))
    if s > 1:
        size = (w // s, h // s)
        left = cv2.resize(left[: size[1] * s, : size[0] * s], size, interpolation=cv2.INTER_AREA)
        right = cv2.resize(right[: size[1] * s, : size[0] * s], size,
                           interpolation=cv2.INTER_AREA)
        u = None if u is None else u[s // 2::s, s // 2::s][: size[1], : size[0]] / s
    pl, pr = confident_matches(left, right, u, fb_max_px=0.5 / s)
    # an s x s block's centre: (i + 0.5) s - 0.5 in the views' pixels
    pl, pr = (pl + 0.5) * s - 0.5, (pr + 0.5) * s - 0.5
    return fit_vertical(pl, pr, (w, h), limit_px, min_matches)
