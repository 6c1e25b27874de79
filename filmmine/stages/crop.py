"""Letterbox and floating-window crop: pure numpy on one full-aspect view."""

from __future__ import annotations

import cv2
import numpy as np


def _bar_extent(lines: np.ndarray, max_luma: float, max_std: float) -> int:
    """How many leading lines (rows of ``lines`` [n, m]) are bar: dark and uniform.

    Read in growing blocks from the edge, stopping at the first line that is not bar: most
    frames have none, and the statistics of every row and column of a view are slow."""
    n, block, i = len(lines), 8, 0
    while i < n:
        part = lines[i:i + block]
        if part.ndim == 3:  # RGB lines: their luma (as filters.luma), only for the lines read
            part = cv2.cvtColor(np.ascontiguousarray(part), cv2.COLOR_RGB2GRAY)
        part = part.astype(np.float32)
        is_bar = (part.mean(axis=1) <= max_luma) & (part.std(axis=1) <= max_std)
        if not is_bar.all():
            return i + int(np.argmin(is_bar))
        i += len(part)
        block = min(2 * block, 256)
    return n


def detect_crop(view: np.ndarray, *, max_luma: float = 24.0, max_std: float = 6.0,
                min_content_frac: float = 0.5, side_frac: float = 0.0) -> tuple[int, int, int, int]:
    """Crop box (x, y, w, h) of a view, [H, W] luma or [H, W, 3] RGB (the luma only of the
    lines looked at is computed: the whole view's is not needed), that drops letterbox bars and
    side bars.

    Rows/columns from each edge that are dark and uniform are bars. When that would leave less
    than ``min_content_frac`` of the height or width the frame is just dark: no bar crop.
    ``side_frac`` of the width is also cut from each side (floating windows). Sizes are even.
    """
    h, w = view.shape[:2]
    cols = view.swapaxes(0, 1)
    top = _bar_extent(view, max_luma, max_std)
    bottom = _bar_extent(view[::-1], max_luma, max_std)
    left = _bar_extent(cols, max_luma, max_std)
    right = _bar_extent(cols[::-1], max_luma, max_std)
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
