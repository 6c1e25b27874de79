"""Frame filters: score, then decide (scores are stored beside every decision).

Pure numpy on the cropped, stored-resolution views. Order of decision: credits (white text on
black, checked before "dark" because such frames are mostly black), dark, low texture, mono,
frozen. The first failing test names the reason.
"""

from __future__ import annotations

import cv2
import numpy as np

REASONS = ("credits", "dark", "low_texture", "mono", "frozen")


def luma(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def score_frame(left_rgb: np.ndarray, right_rgb: np.ndarray,
                previous_left_grey: np.ndarray | None) -> dict[str, float]:
    """All filter scores of one stereo frame. Pure."""
    gl = luma(left_rgb).astype(np.float32)
    gr = luma(right_rgb).astype(np.float32)
    hsv = cv2.cvtColor(left_rgb, cv2.COLOR_RGB2HSV)
    white = (hsv[..., 2] >= 180) & (hsv[..., 1] <= 60)
    gx = cv2.Sobel(gl, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(gl, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    lr_diff = float(np.abs(gl - gr).mean())
    # what a 2 px horizontal parallax would change: the scale a real stereo pair differs by
    self_diff = float(np.abs(gl[:, 2:] - gl[:, :-2]).mean())
    scores = {
        "mean_luma": float(gl.mean()),
        "black_frac": float((gl <= 24).mean()),
        "white_frac": float(white.mean()),
        "texture": float(np.hypot(gx, gy).mean()),
        "lr_diff": lr_diff,
        "mono_ratio": lr_diff / max(self_diff, 1e-3),
        "frozen_diff": float("nan"),
    }
    if previous_left_grey is not None and previous_left_grey.shape == gl.shape:
        scores["frozen_diff"] = float(np.abs(gl - previous_left_grey).mean())
    return scores


def decide(scores: dict[str, float], cfg: dict) -> str | None:
    """Reason for rejecting a frame with these scores, or None. ``cfg`` = recipe['filters']."""
    if (scores["black_frac"] >= cfg["credits_min_black"]
            and cfg["credits_min_white"] <= scores["white_frac"] <= cfg["credits_max_white"]):
        return "credits"
    if scores["mean_luma"] <= cfg["dark_max_luma"]:
        return "dark"
    if scores["texture"] < cfg["lowtex_min_grad"]:
        return "low_texture"
    if scores["mono_ratio"] < cfg["mono_max_ratio"]:
        return "mono"
    fd = scores["frozen_diff"]
    if fd == fd and fd <= cfg["frozen_max_diff"]:  # NaN when there is no previous frame
        return "frozen"
    return None
