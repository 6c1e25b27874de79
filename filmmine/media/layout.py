"""Stereo frame layouts: split a packed frame into views and restore half formats.

Pure numpy. A *view* is one eye at full aspect: half layouts are squeezed 2x along one axis in
the file and stretched back here, so disparities are in pixels of the full-aspect view.
"""

from __future__ import annotations

import cv2
import numpy as np

PACKED_LAYOUTS = ("sbs", "half-sbs", "tab", "half-tab")
# separate: two files; mv-hevc: two views of one multilayer HEVC stream (spatial video). The
# decoder stacks either side by side, left first, so that they are handled like sbs
STACKED_LAYOUTS = ("separate", "mv-hevc")
LAYOUTS = (*PACKED_LAYOUTS, *STACKED_LAYOUTS)
# what --layout may say of one file: detect it, or one file's layout (separate takes two files)
LAYOUT_CHOICES = ("auto", *PACKED_LAYOUTS, "mv-hevc")


def is_side_by_side(layout: str) -> bool:
    return layout in ("sbs", "half-sbs", *STACKED_LAYOUTS)


def view_size(frame_w: int, frame_h: int, layout: str) -> tuple[int, int]:
    """Full-aspect view size (w, h) for a packed frame of size (frame_w, frame_h).

    For ``separate`` and ``mv-hevc`` the frame is the two views stacked side by side by the
    decoder.
    """
    if layout in ("sbs", *STACKED_LAYOUTS):
        return frame_w // 2, frame_h
    if layout == "half-sbs":
        return (frame_w // 2) * 2, frame_h
    if layout == "tab":
        return frame_w, frame_h // 2
    if layout == "half-tab":
        return frame_w, (frame_h // 2) * 2
    raise ValueError(f"unknown layout {layout!r}")


def eye_size(frame_w: int, frame_h: int, layout: str) -> tuple[int, int]:
    """Size (w, h) of one eye as the file stores it (``split_views``: half formats squeezed),
    what a spherical projection is cut from."""
    if is_side_by_side(layout):
        return frame_w // 2, frame_h
    if layout in ("tab", "half-tab"):
        return frame_w, frame_h // 2
    raise ValueError(f"unknown layout {layout!r}")


def split_views(frame: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Packed frame [H, W, C] -> (left, right) as stored in the file (half formats squeezed)."""
    h, w = frame.shape[:2]
    if is_side_by_side(layout):
        half = w // 2
        return frame[:, :half], frame[:, half : 2 * half]
    if layout in ("tab", "half-tab"):
        half = h // 2
        return frame[:half], frame[half : 2 * half]
    raise ValueError(f"unknown layout {layout!r}")


def restore_view(view: np.ndarray, layout: str) -> np.ndarray:
    """Stretch a squeezed half-format view back to full aspect (identity for full layouts)."""
    h, w = view.shape[:2]
    if layout == "half-sbs":
        return cv2.resize(view, (2 * w, h), interpolation=cv2.INTER_LINEAR)
    if layout == "half-tab":
        return cv2.resize(view, (w, 2 * h), interpolation=cv2.INTER_LINEAR)
    return view


def views(frame: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Packed frame -> (left, right) full-aspect views."""
    left, right = split_views(frame, layout)
    return restore_view(left, layout), restore_view(right, layout)


def half_similarity(frame_gray: np.ndarray) -> dict[str, float]:
    """Correlation of the two halves of a grey frame, split left|right and top/bottom.

    A stereo pair's halves show the same scene (high correlation once small shifts are blurred
    away); a mono frame's halves are unrelated.
    """
    g = cv2.GaussianBlur(frame_gray.astype(np.float32), (0, 0), 2.0)
    h, w = g.shape
    out: dict[str, float] = {}
    pairs = {
        "sbs": (g[:, : w // 2], g[:, w // 2 : 2 * (w // 2)]),
        "tab": (g[: h // 2], g[h // 2 : 2 * (h // 2)]),
    }
    for name, (a, b) in pairs.items():
        a = a - a.mean()
        b = b - b.mean()
        den = float(np.sqrt((a * a).sum() * (b * b).sum()))
        out[name] = float((a * b).sum() / den) if den > 1e-6 else 0.0
    return out
