"""Letterbox and floating-window crop: pure numpy on one full-aspect view."""

from __future__ import annotations

import numpy as np


def _bar_extent(profile_mean: np.ndarray, profile_std: np.ndarray, max_luma: float,
                max_std: float) -> int:
    """How many leading entries are bar (dark and uniform)."""
    is_bar = (profile_mean <= max_luma) & (profile_std <= max_std)
    if is_bar.all():
        return len(is_bar)
    return int(np.argmin(is_bar))


def detect_crop(luma: np.ndarray, *, max_luma: float = 24.0, max_std: float = 6.0,
                min_content_frac: float = 0.5, side_frac: float = 0.0) -> tuple[int, int, int, int]:
    """Crop box (x, y, w, h) of a view [H, W] luma that drops letterbox bars and side bars.

    Rows/columns from each edge that are dark and uniform are bars. When that would leave less
    than ``min_content_frac`` of the height or width the frame is just dark: no bar crop.
    ``side_frac`` of the width is also cut from each side (floating windows). Sizes are even.
    """
    h, w = luma.shape
    lum = luma.astype(np.float32)
    rm, rs = lum.mean(axis=1), lum.std(axis=1)
    cm, cs = lum.mean(axis=0), lum.std(axis=0)
    top = _bar_extent(rm, rs, max_luma, max_std)
    bottom = _bar_extent(rm[::-1], rs[::-1], max_luma, max_std)
    left = _bar_extent(cm, cs, max_luma, max_std)
    right = _bar_extent(cm[::-1], cs[::-1], max_luma, max_std)
    if h - top - bottom < min_content_frac * h:
        top = bottom = 0
    if w - left - right < min_content_frac * w:
        left = right = 0
    side = round(side_frac * w)
    left, right = max(left, side), max(right, side)
    # even offsets and sizes keep half-resolution storage exact
    x, y = left + (left & 1), top + (top & 1)
    cw, ch = (w - x - right) // 2 * 2, (h - y - bottom) // 2 * 2
    return x, y, cw, ch
